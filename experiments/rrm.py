"""Recursive reward modelling (Leike et al. 2018) on a ladder of task difficulties, scored by gold throughout.

    oversight experiment=rrm                   # see conf/experiment/rrm.yaml for the time and the result

The overseer is a capacity-limited simulated human (`SimulatedHuman`): `budget` local checks per response,
enough for every unit of the easiest level's responses and a shrinking share of the harder levels'. One SFT
policy answers every level; its K samples per prompt are what the overseer ranks.

Every reward model here is a *process* reward model: it scores each unit of a response from that unit's local
view (`Task.unit_views`), and the response's reward is log P(every unit is right)
(`oversight.training.reward_model.process_reward`). It is trained only on K-way rankings of whole responses
(`process_reward_model_loss`), like any RLHF reward model, starting from the SFT policy's weights. That makes
a level's reward model a step verifier too: pointing the overseer at the units it finds least likely right is
the assistance it gives one level up, where the overseer checks the pointed units first (`assistance:
check_first`) within the same budget.

Who ranks a level's responses (`Feedback`), per arm:

- `unassisted`: the overseer alone (RLHF without assistance);
- `rrm_depth{d}`: the overseer assisted by the level below's reward model of depth d - 1; depth 0 is the
  overseer alone, and the recursion bottoms out at level 0, so depth d at a level k < d is depth k;
- `gold_assistant`: assisted by the level below's reward model trained on gold rankings (the best assistant the
  ladder can train: the upper bound of assistance);
- `gold_feedback`: gold ranks (the ceiling).

The policy step is best-of-N of the SFT policy's samples against the level's reward model (InstructGPT's PPO
stage is in the RLHF core too, but at this scale PPO does not yet beat SFT: see the `rlhf` experiment), so a
policy's gold accuracy is what its reward model can select.

Results (`results.jsonl`, each row with a 95% interval and n, and columns level, difficulty, arm, feedback,
assistant, depth_used): `overseer/accuracy`, `overseer/recall`, `overseer/false_alarms` against gold on the
ranked responses; `overseer/checks` per response (effort); `overseer/harmed` and `overseer/helped` (the assisted
overseer wrong where the unassisted overseer on the same responses was right, and the reverse: failure
amplification); `assistant/hit` (the assistant's first pointer is at a wrong unit of a wrong response);
`rm/accuracy_gold` on held-out gold-ordered pairs; `policy/gold_reward` (graded gold reward: 1 if right, else
the fraction of units passing, scaled below 1) and `policy/gold_accuracy` of the best-of-N pick. Per level,
the same for the SFT samples themselves (`policy/sample_reward`, `policy/sample_accuracy`: N = 1) and for the
best of the N by gold (`policy/oracle_reward`, `policy/oracle_accuracy`: what a perfect reward model picks), and
two baselines without a reward model: `policy/chance_reward`, best-of-N with a scorer at chance (the mean gold
over each prompt's *distinct* samples: identical texts get one score, so chance picks distinct texts
uniformly, and that is below the sample mean when the policy repeats its right answers more than its wrong
ones: `oversight.training.best_of_n.chance_best_of_n`), and `policy/most_frequent_reward`, the most frequent
sample. `rrm_eval_scores.npz` holds every reward model's
unit logits on the held-out samples (`save_eval_scores`). `rrm_models.json` records every reward model trained
(its feedback, the assistant it was trained with, a fingerprint of its parameters) and the fingerprint of each
model where it was used as an assistant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oversight.overseers import GoldOverseer, HumanCapacity, SimulatedHuman
from oversight.overseers.base import Assistance
from oversight.overseers.rankings import MAX_K, MIN_K
from oversight.pipeline import (
    RunContext,
    Trainer,
    gold_reward,
    round_up,
    sample_responses,
    sft_stage,
    tokenize_problems,
)
from oversight.registry import Experiment
from oversight.sampling import Sampler, SamplingConfig
from oversight.settings import check_fields, setting
from oversight.stats import bootstrap_row, proportion_row
from oversight.tasks.base import Critique, Problem, Task
from oversight.training.batched import batch_rows, map_batches
from oversight.training.best_of_n import chance_best_of_n, most_frequent_indices
from oversight.training.loop import TrainConfig
from oversight.training.reward_model import (
    RewardNormalization,
    fold_normalization,
    process_reward,
    process_reward_model_loss,
    ranks_from_scores,
    unit_scores,
)

# rows of policy samples per sampler call, and at most per scoring call (fixed shapes: one program each per
# level)
_SAMPLE_CHUNK = 256
_SCORE_CHUNK = 128
_BASELINES = ("sample", "oracle", "chance", "most_frequent")  # per-level policy/{name}_reward rows


@dataclass
class ProcessRewardModelConfig:
    # Its training stage (`batch_size` rankings per step, at most the number of rankings).
    train: TrainConfig = field(default_factory=TrainConfig)
    # Add each unit's log-likelihood under the reward model's own LM head to its score (a generative verifier
    # started from the SFT policy); false: the scalar head alone.
    generative: bool = True
    # P(right) the untrained reward model gives the units of reference solutions (its head is shifted to it).
    reference_p: float = setting(0.95, gt=0, lt=1)

    def __post_init__(self) -> None:
        check_fields(self, "experiment.reward_model.")


@dataclass
class RRMOptions:
    # Task difficulty of each level of the ladder, easiest first; level 0 is judged by the overseer alone.
    difficulties: list[int] = setting(factory=lambda: [1, 2, 4], ge=1)
    # Deepest recursion measured: arms rrm_depth1 .. rrm_depth{depth} (at most the number of levels - 1).
    depth: int = setting(2, ge=1)
    # Arms to run (null = all: unassisted, rrm_depth1..depth, untrained_assistant and random_assistant (the
    # controls), gold_assistant, gold_feedback); the reward models their assistants need are trained too.
    arms: list[str] | None = None
    # Responses per prompt that each overseer ranks (K).
    k: int = setting(4, ge=MIN_K, le=MAX_K)
    # Prompts per level whose K policy samples are ranked (unseen in SFT).
    num_comparisons: int = setting(256, ge=1)
    # Held-out prompts per level for reward-model accuracy and the best-of-N policy.
    eval_prompts: int = setting(96, ge=1)
    # Policy samples per held-out prompt (N of best-of-N).
    best_of_n: int = setting(8, ge=1)
    # Policy sampling temperature.
    temperature: float = setting(0.7, gt=0)
    # The overseer: checks per response (`budget`), error rates, the order it checks units in without
    # assistance, and how it uses the assistant's pointers (`assistance`).
    overseer: HumanCapacity = field(default_factory=HumanCapacity)
    # Units the assistant points at per response, least likely right first; null = the overseer's budget.
    hints: int | None = setting(None, ge=1)
    # Reward models (one per level and feedback; each is the next level's assistant).
    reward_model: ProcessRewardModelConfig = field(default_factory=ProcessRewardModelConfig)
    # Characters of a unit's line kept in its view (longer lines are wrong anyway; fixed shapes).
    max_line_chars: int = setting(16, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "experiment.")
        d = list(self.difficulties)
        if not d or any(not isinstance(x, int) for x in d) or d != sorted(set(d)):
            raise ValueError(f"experiment.difficulties={d} must be increasing ints >= 1")
        if not 1 <= self.depth <= len(d) - 1:
            raise ValueError(
                f"experiment.depth={self.depth} must be in 1..{len(d) - 1} (the levels above level 0)"
            )
        if self.overseer.budget < 1:
            raise ValueError(f"experiment.overseer.budget={self.overseer.budget} must be >= 1")
        if self.arms is not None:
            unknown = sorted(set(self.arms) - set(arm_names(self.depth)))
            if unknown or not self.arms:
                raise ValueError(
                    f"experiment.arms={list(self.arms)}: unknown {unknown}; choose from {arm_names(self.depth)}"
                )

    def arm_list(self) -> list[str]:
        return list(self.arms) if self.arms is not None else arm_names(self.depth)


# ----------------------------------------------------------------------------------------------------------
# The recursion: which feedback trains which reward model


# Assistants that are controls, not reward models trained on feedback (see Feedback).
CONTROLS = ("untrained", "random")


@dataclass(frozen=True)
class Feedback:
    """Who ranks one level's responses: gold, or the overseer assisted by the reward model trained on
    `assistant` feedback one level down (None: the overseer alone). Names one reward model.

    Two more sources are controls, only ever an assistant: "untrained", the reward model before any training
    (the SFT model's likelihood with the reference shift), and "random", pointers to units in a random order
    (no model). An assistant's gain over them is what its training on feedback adds."""

    level: int
    # "overseer" or "gold"; "untrained" or "random" for a control assistant
    source: str
    assistant: Feedback | None = None

    def __post_init__(self) -> None:
        if self.source not in ("overseer", "gold", *CONTROLS):
            raise ValueError(f"feedback source must be 'overseer', 'gold' or a control, got {self.source!r}")
        if self.assistant is not None and (
            self.source != "overseer" or self.assistant.level != self.level - 1
        ):
            raise ValueError(
                f"an assistant of level-{self.level} overseer feedback must come from level {self.level - 1}"
            )

    @property
    def key(self) -> str:
        """ "L2:H+L1:H+L0:H" = level 2 overseer, assisted by the level-1 model trained on level-1 overseer
        feedback assisted by the level-0 model trained on the level-0 overseer alone; "L1:gold" = gold;
        "L2:H+L1:untrained" = the level-2 overseer with the untrained model's pointers."""
        own = f"L{self.level}:{'H' if self.source == 'overseer' else self.source}"
        return own if self.assistant is None else f"{own}+{self.assistant.key}"

    @property
    def depth(self) -> int:
        """Levels of assistance beneath this feedback (0 for the overseer alone and for gold)."""
        return 0 if self.assistant is None else 1 + self.assistant.depth


def arm_names(depth: int) -> list[str]:
    return [
        "unassisted",
        *[f"rrm_depth{d}" for d in range(1, depth + 1)],
        *[f"{c}_assistant" for c in CONTROLS],
        "gold_assistant",
        "gold_feedback",
    ]


def recursive_feedback(level: int, depth: int) -> Feedback:
    """The overseer at `level` assisted by the recursion of `depth` levels beneath it (clipped at level 0)."""
    if depth == 0 or level == 0:
        return Feedback(level, "overseer")
    return Feedback(level, "overseer", recursive_feedback(level - 1, depth - 1))


def arm_feedback(arm: str, level: int) -> Feedback:
    if arm == "gold_feedback":
        return Feedback(level, "gold")
    if arm in ("gold_assistant", *(f"{c}_assistant" for c in CONTROLS)):
        source = arm.removesuffix("_assistant")
        return Feedback(level, "overseer", Feedback(level - 1, source) if level > 0 else None)
    if arm == "unassisted":
        return Feedback(level, "overseer")
    if arm.startswith("rrm_depth") and arm[len("rrm_depth") :].isdigit():
        return recursive_feedback(level, int(arm[len("rrm_depth") :]))
    raise ValueError(f"unknown arm {arm!r}")


def training_plan(levels: int, arms: list[str]) -> list[Feedback]:
    """Every reward model the arms need, once each, level by level and each after its assistant."""
    needed: dict[Feedback, None] = {}

    def visit(f: Feedback) -> None:
        if f.assistant is not None:
            visit(f.assistant)
        needed.setdefault(f, None)

    for level in range(levels):
        for arm in arms:
            visit(arm_feedback(arm, level))
    return sorted(needed, key=lambda f: f.level)  # stable: assistants stay before the models they help


def released_after(plan: list[Feedback]) -> list[list[Feedback]]:
    """For each step of `plan`, the reward models no later step needs (as an assistant): their states can go
    once that step is done, so a run holds the models still to help, not every model it trained."""
    last = {f: i for i, f in enumerate(plan)}
    for i, f in enumerate(plan):
        if f.assistant is not None:
            last[f.assistant] = max(last[f.assistant], i)
    return [[f for f in plan if last[f] == i] for i in range(len(plan))]


# ----------------------------------------------------------------------------------------------------------
# Data of one level


def pack_views(
    task: Task,
    problems: list[Problem],
    responses: list[list[str]],
    tokenizer,
    units: int,
    width: int,
    max_line_chars: int,
) -> dict[str, np.ndarray]:
    """The unit views of responses (P prompts x K responses) as tokens: views and view_mask (P, K, U, W),
    unit_tokens (P, K, U, W) (1 on the unit's own line and what ends it), unit_mask (P, K, U). BOS + view,
    right-padded; a response's units beyond U are dropped; padding units hold one BOS token so every row has
    a real token.

    A line whole in its view is followed by what ends it in the response: a newline, or the stop token after
    the last unit. Without it a missing unit (an empty line) would cost a generative verifier nothing, and a
    reward summed over units would favour responses that stop early."""
    p, k = len(problems), len(responses[0])
    views = np.full((p, k, units, width), tokenizer.pad_id, np.int32)
    view_mask = np.zeros((p, k, units, width), np.int32)
    unit_tokens = np.zeros((p, k, units, width), np.float32)
    views[..., 0], view_mask[..., 0] = tokenizer.bos_id, 1
    unit_mask = np.zeros((p, k, units), np.float32)
    for i, (problem, texts) in enumerate(zip(problems, responses, strict=True)):
        for j, text in enumerate(texts):
            unit_views = task.unit_views(problem, text)
            for u, view in enumerate(unit_views[:units]):
                context, _, line = view.partition("\n")
                head = tokenizer.prompt_ids(f"{context}\n")
                end = [tokenizer.eos_id] if u == len(unit_views) - 1 else tokenizer.encode("\n")
                body = tokenizer.encode(line[:max_line_chars]) + (end if len(line) <= max_line_chars else [])
                ids = [*head, *body][:width]
                views[i, j, u, : len(ids)] = ids
                view_mask[i, j, u, : len(ids)] = 1
                unit_tokens[i, j, u, len(head) : len(ids)] = 1.0
                unit_mask[i, j, u] = 1.0
    return {"views": views, "view_mask": view_mask, "unit_tokens": unit_tokens, "unit_mask": unit_mask}


@dataclass
class Level:
    index: int
    difficulty: int
    # prompts whose K samples are ranked, and the samples (K per prompt)
    compare: list[Problem]
    responses: list[list[str]]
    # per ranked response: gold says right; gold unit checks
    correct: np.ndarray  # (P, K) bool
    unit_ok: list[list[list[bool]]]
    views: dict[str, np.ndarray]  # (P, K, U, W)
    # held-out prompts, N samples each, their gold reward and correctness, and views
    held_out: list[Problem]
    eval_responses: list[list[str]]
    eval_gold: np.ndarray  # (E, N) float
    eval_correct: np.ndarray  # (E, N) bool
    eval_views: dict[str, np.ndarray]  # (E, N, U, W)
    # the reference solutions of the ranked prompts (P, 1, U, W)
    reference_views: dict[str, np.ndarray]


def save_eval_scores(path, task: Task, levels: list[Level], eval_logits: dict[Feedback, np.ndarray]) -> None:
    """Every reward model's unit logits on its level's held-out samples, next to the samples and their gold,
    so what a reward model prefers can be inspected after the run (`numpy.load(path)`; keys `L{level}/...`:
    responses (E, N) str, gold_reward and correct (E, N), unit_mask (E, N, U), unit_ok (E, N, U) with -1 on
    padding units, and `L{level}/logits/{feedback key}` (E, N, U))."""
    arrays: dict[str, np.ndarray] = {}
    for lv in levels:
        mask = lv.eval_views["unit_mask"]
        unit_ok = np.full(mask.shape, -1, np.int8)
        for i, (problem, texts) in enumerate(zip(lv.held_out, lv.eval_responses, strict=True)):
            for j, text in enumerate(texts):
                ok = task.unit_checks(problem, text)[: mask.shape[-1]]
                unit_ok[i, j, : len(ok)] = ok
        arrays |= {
            f"L{lv.index}/responses": np.asarray(lv.eval_responses, dtype=str),
            f"L{lv.index}/gold_reward": lv.eval_gold,
            f"L{lv.index}/correct": lv.eval_correct,
            f"L{lv.index}/unit_mask": mask,
            f"L{lv.index}/unit_ok": unit_ok,
        }
    for fb, logits in eval_logits.items():
        arrays[f"L{fb.level}/logits/{fb.key}"] = logits
    np.savez_compressed(path, **arrays)


def fingerprint(state) -> str:
    """A short hash of a trained state (to show which trained model was used where)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# The experiment


def run(ctx: RunContext) -> None:
    cfg, opts, tokenizer, task = ctx.cfg, ctx.options, ctx.tokenizer, ctx.task
    heads = tuple(dict.fromkeys([*cfg.model.scalar_heads, "reward"]))
    model_cfg = ctx.model_config(dataclasses.replace(cfg.model, scalar_heads=list(heads)))
    task.unit_views(*_probe(task, opts.difficulties[0]))  # fails early, naming the task, if it has no views
    n_levels = len(opts.difficulties)
    hints = opts.hints or opts.overseer.budget

    # --- 1. splits per level: SFT prompts, ranked prompts, held-out prompts (disjoint) ----------------------
    sft_train, sft_eval, compare_sets, held_sets = [], [], [], []
    for d in opts.difficulties:
        train, held = ctx.splits(d)
        seen = {p.prompt for p in train} | {p.prompt for p in held}
        compare = [
            p
            for p in task.sample(2 * opts.num_comparisons, d, seed=ctx.seed("task/comparisons"))
            if p.prompt not in seen
        ][: opts.num_comparisons]
        if len(held) < opts.eval_prompts or len(compare) < opts.num_comparisons:
            raise ValueError(
                f"difficulty {d}: only {len(held)} held-out and {len(compare)} ranked prompts unseen in SFT "
                f"(need experiment.eval_prompts={opts.eval_prompts}, experiment.num_comparisons="
                f"{opts.num_comparisons}); raise task.num_eval or pick harder difficulties"
            )
        sft_train += train
        sft_eval += held[: max(1, opts.eval_prompts // n_levels)]
        compare_sets.append(compare)
        held_sets.append(held[: opts.eval_prompts])

    # --- 2. one SFT policy for every level --------------------------------------------------------------------
    longest = max(len(tokenizer.encode(p.solution)) for p in sft_train)
    sft = sft_stage(
        ctx,
        model_cfg,
        tokenize_problems(sft_train, tokenizer),
        tokenize_problems(sft_eval, tokenizer),
        sft_eval,
        max_new_tokens=round_up(longest + 8),
    )
    policy = sft.model()

    # --- 3. policy samples per level, with gold and views -----------------------------------------------------
    levels: list[Level] = []
    for i, d in enumerate(opts.difficulties):
        compare, held = compare_sets[i], held_sets[i]
        longest = max(len(tokenizer.encode(p.solution)) for p in compare + held)
        sampler = Sampler(
            policy,
            SamplingConfig(max_new_tokens=round_up(longest + longest // 4 + 1), temperature=opts.temperature),
            (tokenizer.eos_id,),
            tokenizer.pad_id,
        )
        key = ctx.key(f"samples/{d}")
        responses = _sample(sampler, tokenizer, compare, opts.k, jax.random.fold_in(key, 0))
        eval_responses = _sample(sampler, tokenizer, held, opts.best_of_n, jax.random.fold_in(key, 1))
        units = len(task.unit_checks(compare[0], compare[0].solution))  # every step and the answer
        # BOS, the longest reference context with room for a few more digits, newline, the line, its end
        context = max(len(v.partition("\n")[0]) for p in compare for v in task.unit_views(p, p.solution))
        width = round_up(1 + context + 2 + 1 + opts.max_line_chars + 1, 4)

        def gold(problems, texts, fn):
            return np.asarray([[fn(p, t) for t in ts] for p, ts in zip(problems, texts, strict=True)])

        def views(problems, texts, units=units, width=width):
            return pack_views(task, problems, texts, tokenizer, units, width, opts.max_line_chars)

        levels.append(
            Level(
                index=i,
                difficulty=d,
                compare=compare,
                responses=responses,
                correct=gold(compare, responses, lambda p, t: task.check(p, t).correct),
                unit_ok=[
                    [task.unit_checks(p, t) for t in ts] for p, ts in zip(compare, responses, strict=True)
                ],
                views=views(compare, responses),
                held_out=held,
                eval_responses=eval_responses,
                eval_gold=gold(held, eval_responses, lambda p, t: gold_reward(task, p, t)),
                eval_correct=gold(held, eval_responses, lambda p, t: task.check(p, t).correct),
                eval_views=views(held, eval_responses),
                reference_views=views(compare, [[p.solution] for p in compare]),
            )
        )

    # --- 4. reward models, level by level (each trained with its assistant's pointers) ---------------------
    rm = opts.reward_model
    rm_model = nnx.merge(*nnx.split(policy))  # a copy of the SFT policy: every reward model's start
    trainer = Trainer.from_model(rm_model, process_reward_model_loss, rm.train, ctx)
    data_keys = ("views", "view_mask", "unit_mask") + (("unit_tokens",) if rm.generative else ())
    rm_graphdef = trainer.graphdef

    @jax.jit
    def _score(state, views, view_mask, line):  # (R, U, W) -> (R, U) unit logits
        model, _ = nnx.merge(rm_graphdef, state)
        return unit_scores(model, views, view_mask, unit_tokens=line if rm.generative else None)

    def score_units(state, data: dict[str, np.ndarray]) -> np.ndarray:
        """Unit logits (P, K, U) of packed views, in batches of one shape."""
        lead, (u, w) = data["views"].shape[:2], data["views"].shape[2:]
        flat = {name: data[name].reshape(-1, u, w) for name in ("views", "view_mask", "unit_tokens")}
        rows = min(batch_rows(model_cfg, w, u, logits=rm.generative), _SCORE_CHUNK)
        logits = map_batches(
            lambda b: _score(state, b["views"], b["view_mask"], b["unit_tokens"]), flat, rows
        )
        return logits.reshape(*lead, u)

    # Before training, shift the head so the units of the reference solutions score P(right) =
    # rm_reference_p, as InstructGPT normalises its reward model on demonstrations. (A unit's likelihood term
    # is negative even when the unit is right; unshifted, every unit would cost reward and the reward would
    # favour responses that stop early.)
    reference = [
        score_units(trainer.init_state, lv.reference_views)[lv.reference_views["unit_mask"] > 0]
        for lv in levels
    ]
    shift = float(np.log(rm.reference_p / (1 - rm.reference_p)) - np.concatenate(reference).mean())
    fold_normalization(rm_model, RewardNormalization(jnp.float32(1.0), jnp.float32(shift)))
    trainer.restart_from(rm_model)
    ctx.tracker.summary({"rm/reference_shift": shift})

    arms = opts.arm_list()
    plan = training_plan(n_levels, arms)
    release = released_after(plan)
    trained: dict[Feedback, dict] = {}  # feedback -> state (while a later step needs it), judgements
    manifest: dict[str, dict] = {}
    rows_by_feedback: dict[Feedback, list[dict]] = {}
    eval_logits: dict[Feedback, np.ndarray] = {}
    for step, fb in enumerate(plan):
        lv = levels[fb.level]
        # -- who ranks: gold, or the overseer with the assistant's pointers
        if fb.source in CONTROLS:  # a control assistant: nothing to judge or train
            state = trainer.init_state if fb.source == "untrained" else None
            trained[fb] = {"state": state}
            manifest[fb.key] = {"level": fb.level, "difficulty": lv.difficulty, "source": fb.source,
                                "assistant": None, "assistant_fingerprint": None,
                                "fingerprint": None if state is None else fingerprint(state), "pairs": 0}  # fmt: skip
            for done in release[step]:
                trained[done].pop("state")
            continue
        pointers, used = None, None
        if fb.assistant is not None:
            helper = trained[fb.assistant]
            if fb.assistant.source == "random":  # units in a random order, whatever they say
                logits = np.random.default_rng(ctx.seed(f"pointers/{fb.key}")).random(
                    lv.views["unit_mask"].shape
                )
            else:
                logits = score_units(helper["state"], lv.views)  # (P, K, U)
            logits = np.where(lv.views["unit_mask"] > 0, logits, np.inf)
            order = np.argsort(logits, axis=-1, kind="stable")[..., :hints]  # least likely right first
            counts = lv.views["unit_mask"].sum(-1).astype(int)  # (P, K)
            pointers = [
                [[int(u) for u in order[i, j] if u < counts[i, j]] for j in range(opts.k)]
                for i in range(len(lv.compare))
            ]
            used = None if helper["state"] is None else fingerprint(helper["state"])
            manifest[fb.assistant.key].setdefault("assisted", []).append(
                {"feedback": fb.key, "fingerprint": used}
            )
        judged = _judge(task, lv, fb, opts, pointers, ctx.seed(f"judge/{fb.key}"))

        # -- the reward model
        data = _rankings(lv, judged["scores"], data_keys)
        slug = fb.key.replace(":", "_").replace("+", "-")
        stage = ctx.stage(f"rm/{slug}", rm.train.steps, prefix=f"rm_{slug}")
        # every reward model starts from the SFT weights
        state = trainer.fit(stage, data, ctx.seed(f"rm/{fb.key}"), desc=f"rm {fb.key}", keep=1)
        trained[fb] = {"state": state, "judged": judged}
        manifest[fb.key] = {
            "level": fb.level,
            "difficulty": lv.difficulty,
            "source": fb.source,
            "assistant": fb.assistant.key if fb.assistant else None,
            "assistant_fingerprint": used,
            "fingerprint": fingerprint(state),
            # preferences it learnt from (pairs of one prompt's responses the judge did not tie)
            "pairs": int((data["ranks"][:, :, None] < data["ranks"][:, None, :]).sum()),
        }
        eval_logits[fb] = score_units(state, lv.eval_views)  # (E, N, U)
        rewards = np.asarray(process_reward(eval_logits[fb], lv.eval_views["unit_mask"]))
        rows_by_feedback[fb] = _feedback_rows(task, lv, fb, opts, judged, pointers, rewards, trained)
        for done in release[step]:
            trained[done].pop("state")

    # --- 5. results: every arm at every level -------------------------------------------------------------
    rows: list[dict] = []
    for lv in levels:
        common = {"level": lv.index, "difficulty": lv.difficulty, "task": cfg.task.name}
        n_eval = lv.eval_correct.size
        rows.append(
            proportion_row("policy/sample_accuracy", int(lv.eval_correct.sum()), n_eval, arm="", **common)
        )
        oracle = lv.eval_correct.any(1)
        rows.append(
            proportion_row("policy/oracle_accuracy", int(oracle.sum()), len(oracle), arm="", **common)
        )
        rows.append(bootstrap_row("policy/sample_reward", lv.eval_gold.mean(1), np.mean, arm="", **common))
        rows.append(bootstrap_row("policy/oracle_reward", lv.eval_gold.max(1), np.mean, arm="", **common))
        # what best-of-N reaches with no reward model: by chance, and by picking the most frequent sample
        rows.append(
            bootstrap_row(
                "policy/chance_reward",
                chance_best_of_n(lv.eval_responses, lv.eval_gold),
                np.mean,
                arm="",
                **common,
            )
        )
        voted = most_frequent_indices(lv.eval_responses)
        rows.append(
            bootstrap_row(
                "policy/most_frequent_reward",
                lv.eval_gold[np.arange(len(voted)), voted],
                np.mean,
                arm="",
                **common,
            )
        )
        for arm in arms:
            fb = arm_feedback(arm, lv.index)
            extra = {
                "arm": arm,
                "feedback": fb.key,
                "assistant": fb.assistant.key if fb.assistant else "",
                "depth_used": fb.depth,
            }
            rows += [{**r, **extra, **common} for r in rows_by_feedback[fb]]
    ctx.tracker.table("results", rows)
    if ctx.writes_files:
        (ctx.run_dir / "rrm_models.json").write_text(json.dumps(manifest, indent=2) + "\n")
        save_eval_scores(ctx.run_dir / "rrm_eval_scores.npz", task, levels, eval_logits)
    summary = {
        f"{r['metric']}/L{r['level']}/{r['arm']}": r["value"]
        for r in rows
        if r["metric"]
        in ("policy/gold_reward", "policy/gold_accuracy", "rm/accuracy_gold", "overseer/accuracy")
    }
    ctx.tracker.summary(summary)
    print(format_table(rows, arms), f"\nrun folder {ctx.run_dir}", sep="")


def _probe(task: Task, difficulty: int) -> tuple[Problem, str]:
    problem = task.sample(1, difficulty, seed=0)[0]
    return problem, problem.solution


def _sample(sampler: Sampler, tokenizer, problems: list[Problem], per_prompt: int, key) -> list[list[str]]:
    """`per_prompt` samples of each problem, grouped by problem."""
    prompts = tokenize_problems(problems, tokenizer)[0]
    texts = sample_responses(sampler, prompts, key, tokenizer, per_prompt, _SAMPLE_CHUNK)[3]
    return [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(problems))]


def _judge(task: Task, lv: Level, fb: Feedback, opts: RRMOptions, pointers, seed: int) -> dict:
    """Scores (P, K) of the level's responses by `fb`'s judge, and what it flagged and how many units it
    checked per response."""
    if fb.source == "gold":
        judge = GoldOverseer(task, seed=seed)
        js = [judge.judge(p, r) for p, r in zip(lv.compare, lv.responses, strict=True)]
        scores = np.asarray([j.scores for j in js])
        return {"scores": scores, "flagged": ~lv.correct, "checks": None}
    overseer = SimulatedHuman(opts.overseer, task, seed=seed)
    js = []
    for i, (p, r) in enumerate(zip(lv.compare, lv.responses, strict=True)):
        shown = None
        if pointers is not None:
            shown = Assistance([[Critique(u) for u in pointers[i][j]] for j in range(len(r))])
        js.append(overseer.judge(p, r, shown))
    return {
        "scores": np.asarray([j.scores for j in js]),
        "flagged": np.asarray([[f.flawed for f in j.flaws] for j in js]),
        "checks": np.asarray([[len(f.checked) for f in j.flaws] for j in js]),
    }


def _rankings(lv: Level, scores: np.ndarray, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Training data of a reward model: each prompt's K responses best first by the judge's scores (ties,
    i.e. equal scores, carry no preference)."""
    order = np.argsort(-scores, axis=1, kind="stable")  # (P, K)
    take = lambda x: np.take_along_axis(x, order.reshape(*order.shape, *([1] * (x.ndim - 2))), 1)  # noqa: E731
    ranks = np.asarray([ranks_from_scores(list(s[o])) for s, o in zip(scores, order, strict=True)], np.int32)
    return {
        **{key: take(lv.views[key]) for key in keys},
        "valid": np.ones(order.shape, np.int32),
        "ranks": ranks,
    }


def _feedback_rows(task, lv: Level, fb: Feedback, opts, judged, pointers, rewards, trained) -> list[dict]:
    """Rows of one feedback at its level: its judge against gold, its reward model, its best-of-N policy."""
    wrong = ~lv.correct  # (P, K) gold: the response is wrong
    flagged = judged["flagged"]
    rows = [
        proportion_row("overseer/accuracy", int((flagged == wrong).sum()), wrong.size),
        proportion_row("overseer/recall", int((flagged & wrong).sum()), int(wrong.sum())),
        proportion_row("overseer/false_alarms", int((flagged & ~wrong).sum()), int((~wrong).sum())),
    ]
    if judged["checks"] is not None:
        checks = judged["checks"]
        rows.append(
            {
                "metric": "overseer/checks",
                "value": float(checks.mean()),
                "ci_low": None,
                "ci_high": None,
                "n": int(checks.size),
                "max_checks": int(checks.max()),
                "budget": opts.overseer.budget,
            }
        )
    alone_fb = Feedback(fb.level, "overseer")
    if fb.assistant is not None and alone_fb in trained:
        alone = trained[alone_fb]["judged"]["flagged"]
        right_alone, right_now = alone == wrong, flagged == wrong
        rows.append(proportion_row("overseer/harmed", int((right_alone & ~right_now).sum()), wrong.size))
        rows.append(proportion_row("overseer/helped", int((~right_alone & right_now).sum()), wrong.size))
    if fb.assistant is not None:
        hits = [
            not lv.unit_ok[i][j][pointers[i][j][0]]
            for i, j in zip(*np.nonzero(wrong), strict=True)
            if pointers[i][j] and pointers[i][j][0] < len(lv.unit_ok[i][j])
        ]
        rows.append(proportion_row("assistant/hit", int(sum(hits)), int(wrong.sum())))
    # the reward model on held-out samples: gold-ordered pairs, and best-of-N
    right = total = 0.0
    for r, g in zip(rewards, lv.eval_gold, strict=True):
        dr, dg = r[:, None] - r[None, :], g[:, None] - g[None, :]
        pairs = dg > 0
        total += pairs.sum()
        right += (dr[pairs] > 0).sum() + 0.5 * (dr[pairs] == 0).sum()
    rows.append(proportion_row("rm/accuracy_gold", int(round(right)), int(total)))
    pick = rewards.argmax(1)
    chosen = lv.eval_correct[np.arange(len(pick)), pick]
    rows.append(proportion_row("policy/gold_accuracy", int(chosen.sum()), len(chosen), N=opts.best_of_n))
    graded = lv.eval_gold[np.arange(len(pick)), pick]
    rows.append(bootstrap_row("policy/gold_reward", graded, np.mean, N=opts.best_of_n))
    return rows


def format_table(rows: list[dict], arms: list[str]) -> str:
    """Policy gold accuracy (best-of-N) per level and arm, with the reward model's and the overseer's."""
    levels = sorted({r["level"] for r in rows})
    get = {(r["metric"], r["level"], r.get("arm", "")): r for r in rows}
    lines = []
    for metric in ("overseer/accuracy", "rm/accuracy_gold", "policy/gold_reward", "policy/gold_accuracy"):
        lines.append(f"{metric:<22}" + "".join(f"{a:>16}" for a in arms))
        for level in levels:
            cells = "".join(f"{get[(metric, level, a)]['value']:>16.3f}" for a in arms)
            lines.append(
                f"  level {level} (d{get[(metric, level, arms[0])]['difficulty']})".ljust(22) + cells
            )
    for level in levels:
        s, o = get[("policy/sample_accuracy", level, "")], get[("policy/oracle_accuracy", level, "")]
        reward = {name: get[(f"policy/{name}_reward", level, "")]["value"] for name in _BASELINES}
        lines.append(
            f"level {level}: SFT samples: accuracy {s['value']:.3f}, gold reward {reward['sample']:.3f}; "
            f"best of the N by gold: accuracy {o['value']:.3f}, gold reward {reward['oracle']:.3f}; "
            f"no reward model: at chance {reward['chance']:.3f}, most frequent sample {reward['most_frequent']:.3f}"
        )
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="rrm",
    description="Recursive reward modelling on a difficulty ladder: overseer + lower-level reward models as step verifiers.",
    options=RRMOptions,
    run=run,
)
