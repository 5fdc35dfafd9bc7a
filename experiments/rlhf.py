"""RLHF end to end (the InstructGPT recipe) on a built-in task, scored by the task's gold checker throughout.

    oversight experiment=rlhf                  # see conf/experiment/rlhf.yaml for the time and the result

Stages, each checkpointed under `checkpoints/<stage>/` with one global step count (SFT steps, then reward-model
steps, then PPO iterations), so a killed run resumes in the stage it was in and a finished stage is restored
from its final checkpoint instead of retrained:

1. `sft`: next-token training on reference solutions (`experiments.common.train_sft`), on the training prompts
   not kept for RL (`rl_fraction`; InstructGPT's stages use disjoint prompt sets).
2. comparisons: K samples per RL prompt from the SFT policy, ranked by a capacity-limited simulated labeller
   (`SimulatedHuman`); ties (the labeller found the same number of flaws) carry no preference.
3. `rm`: a copy of the SFT trunk with a `reward` head, trained on the K-way rankings (all pairs of a prompt
   are one batch element); with `rm_generative` its score adds its own log-likelihood of the response.
   Held-out accuracy is measured on gold-ordered pairs of held-out rankings, next to the labeller's own
   agreement with gold on those pairs: the labeller is the RM's ceiling.
4. normalisation: bias (and gain) so SFT samples score mean 0 (std 1); folded into the reward head.
5. best-of-N (N = 1..64) of SFT samples against the RM: gold and proxy reward against KL = log N - (N-1)/N.
6. `ppo` on the RL prompts: the SFT policy, a `value` head (on the policy's trunk, or on a separate critic
   that starts as the RM, at its own learning rate; head from the RM or zero), frozen SFT reference, per-token
   KL penalty, score at the last real token, missing-stop penalty, GAE, whitening, epochs of minibatches. Three
   jitted phases (rollout scoring, advantages, update) of fixed shapes. Every `eval_every` iterations:
   gold reward, proxy reward and KL of policy samples on held-out prompts, and the gold win rate of PPO
   answers over SFT answers.
7. with `rounds` > 1, InstructGPT's iteration: the current policy's samples ranked by the labeller, the
   reward model trained on all rankings so far (`checkpoints/rm_<round>`), PPO continued (`ppo_<round>`).

Results (`results.jsonl`, each with a 95% interval and n): `labeller/gold_agreement`, `rm/accuracy_gold`,
`rm/accuracy_labeller`, `sft/gold_reward`, `ppo/gold_reward`, `gold/win_rate`, and the over-optimisation
points `overopt/gold` and `overopt/proxy` (columns `method` = best_of_n | ppo, `kl`, `N` or `step`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from experiments.common import (
    RenamedTracker,
    decode_responses,
    gold_reward,
    round_up,
    task_splits,
    tokenize_problems,
    train_sft,
    train_state_from_model,
)
from oversight.data.tokenizer import load_tokenizer
from oversight.models import build_model_config
from oversight.overseers import GoldOverseer, HumanCapacity, RankingCollector, SimulatedHuman
from oversight.parallel import batch_sharding, shard_batch
from oversight.registry import Experiment, RunContext
from oversight.sampling import Sampler, SamplingConfig
from oversight.sampling.generate import left_pad
from oversight.stats import bootstrap_interval, proportion_row
from oversight.tasks import get_task
from oversight.training.best_of_n import best_of_n_kl
from oversight.training.checkpoint import Checkpointer, abstract_like
from oversight.training.loop import TrainConfig, make_optimizer, make_train_step, train_loop
from oversight.training.ppo import (
    ActorCritic,
    AdaptiveKLController,
    PPOConfig,
    actor_and_critic,
    actor_critic_optimizer,
    init_value_head,
    make_ppo_update,
    make_rollout_phases,
    rollout_batch,
)
from oversight.training.reward_model import (
    fit_normalization,
    fold_normalization,
    pack_rankings,
    reward_model_loss,
    reward_model_metrics,
    reward_scores,
)
from oversight.training.sft import epoch_batches

VALUE_INITS = ("reward_model", "zero")
CRITICS = ("shared", "separate")


@dataclass
class RLHFOptions:
    # Generation budget per response (rollouts, comparisons, evaluation).
    max_new_tokens: int = 48
    # Held-out prompts answered greedily for the SFT stage's gold accuracy.
    sft_eval_samples: int = 32
    # Share of the distinct training prompts kept out of SFT for the comparisons and PPO (0 = every stage
    # uses every prompt). InstructGPT's stages use disjoint prompt sets; here a policy that has memorised a
    # prompt's answer in SFT offers neither informative comparisons nor room for PPO on it.
    rl_fraction: float = 0.0
    # --- comparisons from the simulated labeller
    # Responses per prompt that the labeller ranks (K).
    k: int = 4
    # Prompts (from the training split) whose K SFT samples are ranked.
    num_comparisons: int = 1024
    # Fraction of those rankings held out to measure the reward model.
    rm_heldout_fraction: float = 0.25
    # Units the labeller can check per response.
    labeller_budget: int = 3
    # Per check: probability the labeller misses a wrong unit.
    labeller_miss_rate: float = 0.05
    # Per check: probability a right unit looks wrong to the labeller.
    labeller_false_alarm_rate: float = 0.02
    # Which units it checks: "random" or "in_order".
    labeller_order: str = "random"
    # --- reward model
    rm_steps: int = 150
    rm_batch_size: int = 16
    rm_learning_rate: float = 3e-4
    # Normalise the reward to std 1 on SFT samples as well as mean 0.
    rm_normalize_std: bool = True
    # Generative reward model: the score adds the model's own log-likelihood of the response (it starts as the
    # SFT policy's), trained with the head by the ranking loss (`reward_scores`).
    rm_generative: bool = False
    # --- PPO
    ppo_iterations: int = 30
    # Prompts per rollout batch (one response each).
    rollout_batch: int = 64
    ppo_learning_rate: float = 3e-5
    ppo_epochs: int = 4
    ppo_minibatches: int = 4
    kl_coef: float = 0.1
    # Adaptive KL target (summed KL per response, nats); null = fixed β.
    kl_target: float | None = None
    kl_horizon: int = 10000
    clip_eps: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    missing_stop_penalty: float = 1.0
    # Rollout (and evaluation) sampling temperature.
    temperature: float = 1.0
    # Value head initialisation: "reward_model" (InstructGPT) or "zero".
    value_init: str = "reward_model"
    # Where the value head lives: "shared" (on the policy's trunk, Ziegler et al.) or "separate" (a critic
    # transformer started from the reward model, as InstructGPT's value function).
    critic: str = "shared"
    # Learning rate of a separate critic (null: the policy's). Its value head may start at zero, and at the
    # policy's rate it would not even learn the returns' mean within a short run.
    critic_learning_rate: float | None = None
    # Evaluate on held-out prompts every N iterations (and before the first and after the last).
    eval_every: int = 5
    # RM/PPO rounds (InstructGPT iterated): after round 1, each round ranks samples of the current policy on
    # the training comparison prompts, trains the reward model on all rankings so far, and runs PPO on.
    rounds: int = 1
    checkpoint_every: int = 10
    # Held-out prompts for PPO evaluation (win rate, gold, proxy, KL); at most task.num_eval.
    eval_prompts: int = 256
    # --- over-optimisation: best-of-N
    # Held-out prompts with `bon_max_n` SFT samples each.
    bon_prompts: int = 32
    # Largest N (a power of two); N = 1, 2, 4, ..., bon_max_n.
    bon_max_n: int = 64

    def __post_init__(self) -> None:
        if self.critic not in CRITICS:
            raise ValueError(f"experiment.critic={self.critic!r} is not one of {CRITICS}")
        if self.critic_learning_rate is not None and self.critic != "separate":
            raise ValueError("experiment.critic_learning_rate needs experiment.critic=separate")
        if self.value_init not in VALUE_INITS:
            raise ValueError(f"experiment.value_init={self.value_init!r} is not one of {VALUE_INITS}")
        if self.bon_max_n < 1 or self.bon_max_n & (self.bon_max_n - 1):
            raise ValueError(f"experiment.bon_max_n={self.bon_max_n} must be a power of two")
        if self.rounds < 1:
            raise ValueError(f"experiment.rounds={self.rounds} must be >= 1")
        if not 0 <= self.rl_fraction < 1:
            raise ValueError(f"experiment.rl_fraction={self.rl_fraction} must be in [0, 1)")
        if not 0 < self.rm_heldout_fraction < 1:
            raise ValueError(f"experiment.rm_heldout_fraction={self.rm_heldout_fraction} must be in (0, 1)")

    def ppo_config(self) -> PPOConfig:
        return PPOConfig(
            clip_eps=self.clip_eps,
            clip_value=self.clip_value,
            vf_coef=self.vf_coef,
            ent_coef=self.ent_coef,
            kl_coef=self.kl_coef,
            kl_target=self.kl_target,
            kl_horizon=self.kl_horizon,
            epochs=self.ppo_epochs,
            minibatches=self.ppo_minibatches,
            missing_stop_penalty=self.missing_stop_penalty,
            temperature=self.temperature,
        )


def mean_row(metric: str, values, seed: int = 0, **extra) -> dict:
    """A results row for a mean with its percentile-bootstrap 95% interval."""
    values = np.asarray(values, np.float64)
    lo, hi = bootstrap_interval(values, np.mean, seed=seed)
    return {
        "metric": metric,
        "value": float(values.mean()),
        "ci_low": lo,
        "ci_high": hi,
        "n": len(values),
        **extra,
    }


def split_for_rl(problems: list, rl_fraction: float) -> tuple[list, list]:
    """(SFT problems, comparison and PPO problems): the last `rl_fraction` of the distinct prompts, in order of
    first appearance, go to the second list and no prompt is in both. With 0 both lists are `problems`."""
    if rl_fraction == 0:
        return problems, problems
    distinct = list(dict.fromkeys(p.prompt for p in problems))
    rl_prompts = set(distinct[len(distinct) - int(round(rl_fraction * len(distinct))) :])
    if not rl_prompts or len(rl_prompts) == len(distinct):
        raise ValueError(f"experiment.rl_fraction={rl_fraction} leaves no prompts for SFT or for RL")
    rl = [p for p in problems if p.prompt in rl_prompts]
    return [p for p in problems if p.prompt not in rl_prompts], list({p.prompt: p for p in rl}.values())


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    mesh, rules = ctx.mesh, cfg.mesh.rules
    tokenizer = load_tokenizer(cfg.tokenizer)
    stop = (tokenizer.eos_id,)
    # One architecture for every role: policy (+ value head), reference, reward model (reward head).
    heads = tuple(dict.fromkeys([*cfg.model.scalar_heads, "reward", "value"]))
    model_cfg = build_model_config(dataclasses.replace(cfg.model, scalar_heads=list(heads)), tokenizer)
    task = get_task(cfg.task.name, **cfg.task.options)
    train_problems, eval_problems = task_splits(task, cfg)
    sft_problems, rl_problems = split_for_rl(train_problems, opts.rl_fraction)
    common = {"task": cfg.task.name, "difficulty": cfg.task.difficulty}
    rows: list[dict] = []
    ckpt = ctx.run_dir / "checkpoints"

    # --- 1. SFT ----------------------------------------------------------------------------------------------
    sft = train_sft(
        train_cfg=cfg.train,
        model_cfg=model_cfg,
        seed=cfg.seed,
        mesh=mesh,
        rules=rules,
        tokenizer=tokenizer,
        task=task,
        train_examples=tokenize_problems(sft_problems, tokenizer),
        eval_examples=tokenize_problems(eval_problems, tokenizer),
        eval_problems=eval_problems,
        checkpoint_dir=ckpt / "sft",
        tracker=RenamedTracker(ctx.tracker, {"train/": "sft/"}),
        eval_samples=opts.sft_eval_samples,
        max_new_tokens=opts.max_new_tokens,
        metric_prefix="sft/eval_",
    )
    correct, n = sft.gold_accuracy(sft.state)
    rows.append(proportion_row("sft/gold_accuracy_greedy", correct, n, **common))
    sft_model = sft.model()
    graphdef, sft_params = nnx.split(sft_model)  # the model alone: reference policy and starting point

    # Fixed shapes: every prompt is left-padded to one length, every response is max_new_tokens long.
    all_prompts, _ = tokenize_problems(train_problems + eval_problems, tokenizer)
    prompt_len = round_up(max(len(p) for p in all_prompts))
    seq_len = prompt_len + opts.max_new_tokens
    if seq_len > model_cfg.max_seq_len:
        raise ValueError(
            f"prompts ({prompt_len}) + max_new_tokens exceed max_seq_len {model_cfg.max_seq_len}"
        )
    sampling = SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature)

    def make_sampler(model, batch: int) -> Sampler:
        return Sampler(
            model, sampling, stop, tokenizer.pad_id, batch_buckets=(batch,), prompt_buckets=(prompt_len,)
        )

    def sample_texts(sampler: Sampler, problems, key, per_prompt: int = 1, chunk: int | None = None):
        """`per_prompt` samples of each problem (problem-major), as (prompt tokens, response tokens, mask, texts)."""
        prompts = [p for p in tokenize_problems(problems, tokenizer)[0] for _ in range(per_prompt)]
        chunk = chunk or len(prompts)
        outs = [
            sampler.sample(prompts[i : i + chunk], jax.random.fold_in(key, i))
            for i in range(0, len(prompts), chunk)
        ]
        tokens = np.concatenate([np.asarray(o.tokens) for o in outs])
        mask = np.concatenate([np.asarray(o.mask) for o in outs])
        return prompts, tokens, mask, decode_responses(tokenizer, tokens, mask)

    # --- 2. comparisons from the simulated labeller ------------------------------------------------------------
    k = opts.k
    compare_problems = rl_problems[: opts.num_comparisons]
    chunk = 256 // k * k
    sft_sampler = make_sampler(sft_model, chunk)
    _, _, _, texts = sample_texts(sft_sampler, compare_problems, jax.random.key(cfg.seed + 17), k, chunk)
    capacity = HumanCapacity(
        budget=opts.labeller_budget,
        miss_rate=opts.labeller_miss_rate,
        false_alarm_rate=opts.labeller_false_alarm_rate,
        order=opts.labeller_order,
    )
    labeller = RankingCollector(SimulatedHuman(capacity, task, seed=cfg.seed), k, seed=cfg.seed)
    gold = GoldOverseer(task, seed=cfg.seed)
    per_prompt = [texts[i * k : (i + 1) * k] for i in range(len(compare_problems))]
    rankings = labeller.collect(compare_problems, per_prompt)
    n_heldout = max(1, int(round(opts.rm_heldout_fraction * len(rankings))))
    train_rank, heldout_rank = rankings[:-n_heldout], rankings[-n_heldout:]
    heldout_problems = compare_problems[-n_heldout:]

    def encode_ranking(r, order=None):
        order = r.order if order is None else order
        return [[*tokenizer.encode(r.responses[i]), tokenizer.eos_id] for i in order], [
            r.scores[i] for i in order
        ]

    rm_len = round_up(seq_len + 1)
    prompt_tokens = {p.prompt: [tokenizer.bos_id, *tokenizer.encode(p.prompt)] for p in compare_problems}

    def pack(rankings, judgements=None) -> dict:
        """Reward-model rows of rankings, each response in the labeller's order (ties marked), or with
        `judgements` in their order and with their scores."""
        if judgements is None:
            encoded = [encode_ranking(r) for r in rankings]
        else:
            encoded = [
                (encode_ranking(r, j.ranking)[0], [float(j.scores[i]) for i in j.ranking])
                for r, j in zip(rankings, judgements, strict=True)
            ]
        return pack_rankings(
            [prompt_tokens[r.prompt] for r in rankings],
            [e[0] for e in encoded],
            k,
            rm_len,
            tokenizer.pad_id,
            scores=[e[1] for e in encoded],
            generative=opts.rm_generative,
        )

    rm_data = pack(train_rank)
    # Held-out: the same responses in the labeller's order and in gold's order.
    held_lab_data = pack(heldout_rank)
    gold_judgements = [
        gold.judge(p, list(r.responses)) for p, r in zip(heldout_problems, heldout_rank, strict=True)
    ]
    held_gold_data = pack(heldout_rank, gold_judgements)
    # The labeller's forced choice (its ranking, ties broken at random) on the pairs gold orders strictly.
    agree = n_gold_pairs = 0
    for r, j in zip(heldout_rank, gold_judgements, strict=True):
        lab_pos = {i: pos for pos, i in enumerate(r.order)}
        for a in range(k):
            for b in range(a + 1, k):
                if j.scores[a] != j.scores[b]:
                    n_gold_pairs += 1
                    agree += (j.scores[a] > j.scores[b]) == (lab_pos[a] < lab_pos[b])
    rows.append(proportion_row("labeller/gold_agreement", agree, n_gold_pairs, **common))
    labelled_pairs = int(
        np.sum(np.asarray(rm_data["ranks"])[:, :, None] < np.asarray(rm_data["ranks"])[:, None, :])
    )
    ctx.tracker.summary(
        {"labeller/train_pairs": labelled_pairs, "labeller/gold_agreement": agree / max(n_gold_pairs, 1)}
    )

    # --- 3. reward model ---------------------------------------------------------------------------------------
    sft_steps = cfg.train.steps
    # One global step count over the stages: SFT, then per round the reward model's steps and PPO iterations.
    round_steps = opts.rm_steps + opts.ppo_iterations

    @jax.jit
    def rm_rewards(params, batch):
        model = nnx.merge(graphdef, params)
        b, kk, t = batch["tokens"].shape
        scored = batch.get("scored_tokens")
        flat = reward_scores(
            model,
            batch["tokens"].reshape(b * kk, t),
            batch["mask"].reshape(b * kk, t),
            scored_tokens=None if scored is None else scored.reshape(b * kk, t),
        )
        return flat.reshape(b, kk)

    def rm_eval(params) -> dict[str, float]:
        out = {}
        for name, data in (("gold", held_gold_data), ("labeller", held_lab_data)):
            r = rm_rewards(params, shard_batch(data, mesh, rules))
            m = reward_model_metrics(r, jnp.asarray(data["valid"]), jnp.asarray(data["ranks"]))
            out |= {f"rm/heldout_{key}_{name}": float(v) for key, v in m.items()}
        return out

    def fit_reward_model(init_model, data: dict, round_no: int) -> nnx.Module:
        """Train a copy of `init_model` (the SFT policy in round 1, the previous reward model after) on the
        packed rankings; checkpointed under `rm` (round 1) or `rm_<round>`. Returns the trained model."""
        rm_cfg = dataclasses.replace(
            cfg.train,
            steps=opts.rm_steps,
            batch_size=min(opts.rm_batch_size, len(data["valid"])),
            learning_rate=opts.rm_learning_rate,
            warmup_steps=min(cfg.train.warmup_steps, max(opts.rm_steps // 10, 1)),
            eval_every=max(opts.rm_steps // 3, 1),
            checkpoint_every=max(opts.rm_steps // 2, 1),
        )
        rm_graphdef, rm_state, rm_shardings = train_state_from_model(
            init_model, make_optimizer(rm_cfg), mesh, rules
        )
        rm_step = make_train_step(rm_graphdef, reward_model_loss, rm_shardings, mesh, rules)
        name = "rm" if round_no == 1 else f"rm_{round_no}"
        checkpointer = Checkpointer(ckpt / name, keep=rm_cfg.keep_checkpoints)
        rm_state = train_loop(
            state=rm_state,
            step_fn=rm_step,
            batch_fn=epoch_batches(data, rm_cfg.batch_size, cfg.seed + round_no - 1),
            cfg=rm_cfg,
            tracker=RenamedTracker(ctx.tracker, {"train/": "rm/"}),
            checkpointer=checkpointer,
            mesh=mesh,
            rules=rules,
            eval_fn=lambda state, step=0: rm_eval(nnx.split(nnx.merge(rm_graphdef, state)[0])[1]),
            desc="reward model" if round_no == 1 else f"reward model, round {round_no}",
            step_offset=sft_steps + (round_no - 1) * round_steps,
        )
        checkpointer.close()
        model = nnx.merge(rm_graphdef, rm_state)[0]
        final_rm = rm_eval(nnx.split(model)[1])
        extra = {**common, "round": round_no}
        for name in ("gold", "labeller"):
            pairs = int(final_rm[f"rm/heldout_pairs_{name}"])
            rows.append(
                proportion_row(
                    f"rm/accuracy_{name}",
                    round(final_rm[f"rm/heldout_accuracy_{name}"] * pairs),
                    pairs,
                    **extra,
                )
            )
        rows.append(
            {
                "metric": "rm/ece_gold",
                "value": final_rm["rm/heldout_ece_gold"],
                "ci_low": None,
                "ci_high": None,
                "n": int(final_rm["rm/heldout_pairs_gold"]),
                **extra,
            }
        )
        return model

    reward_model = fit_reward_model(sft_model, rm_data, 1)

    # --- 4. normalisation on SFT samples ----------------------------------------------------------------------
    @jax.jit
    def proxy_scores(rm_params, prompt, prompt_mask, response, response_mask):
        rm = nnx.merge(graphdef, rm_params)
        tokens = jnp.concatenate([prompt, response], axis=1)
        mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
        scored = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1)
        return reward_scores(
            rm, tokens, mask, "reward", scored if opts.rm_generative else None
        )  # (B,) float32

    def score_texts(params, prompts, tokens, mask, batch: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(prompts), batch):
            p, pm = left_pad(prompts[i : i + batch], prompt_len, tokenizer.pad_id)
            out.append(np.asarray(proxy_scores(params, p, pm, tokens[i : i + batch], mask[i : i + batch])))
        return np.concatenate(out)

    # All K SFT samples of the comparison prompts stand in for the demonstrations InstructGPT normalises on.
    norm_prompts, norm_tokens, norm_mask, _ = sample_texts(
        sft_sampler, compare_problems, jax.random.key(cfg.seed + 17), k, chunk
    )

    def normalised(reward_model, round_no: int):
        """Fold a bias (and gain) into the reward head so SFT samples score mean 0 (std 1); the parameters."""
        raw = score_texts(nnx.split(reward_model)[1], norm_prompts, norm_tokens, norm_mask)
        norm = fit_normalization(jnp.asarray(raw), scale=opts.rm_normalize_std)
        fold_normalization(reward_model, norm)
        suffix = "" if round_no == 1 else f"_round{round_no}"
        ctx.tracker.summary(
            {f"rm/norm_gain{suffix}": float(norm.gain), f"rm/norm_bias{suffix}": float(norm.bias)}
        )
        return nnx.split(reward_model)[1]

    rm_params = normalised(reward_model, 1)

    # --- 5. best-of-N against the RM -------------------------------------------------------------------------
    bon_problems = eval_problems[: opts.bon_prompts]
    nmax = opts.bon_max_n
    b_prompts, b_tokens, b_mask, b_texts = sample_texts(
        sft_sampler, bon_problems, jax.random.key(cfg.seed + 29), nmax, chunk
    )
    proxy = score_texts(rm_params, b_prompts, b_tokens, b_mask).reshape(len(bon_problems), nmax)
    golds = np.asarray(
        [
            gold_reward(task, p, t)
            for i, p in enumerate(bon_problems)
            for t in b_texts[i * nmax : (i + 1) * nmax]
        ]
    ).reshape(len(bon_problems), nmax)
    n_values = [2**i for i in range(int(np.log2(nmax)) + 1)]
    for big_n in n_values:
        # Disjoint groups of N samples per prompt: each group's best by proxy is one best-of-N draw.
        groups = nmax // big_n
        p = proxy.reshape(len(bon_problems), groups, big_n)
        g = golds.reshape(len(bon_problems), groups, big_n)
        pick = p.argmax(-1)[..., None]
        chosen_p = np.take_along_axis(p, pick, -1)[..., 0].mean(1)  # (prompts,) mean over groups
        chosen_g = np.take_along_axis(g, pick, -1)[..., 0].mean(1)
        kl = float(best_of_n_kl(big_n))
        extra = {"method": "best_of_n", "N": big_n, "kl": kl, "step": None, **common}
        rows.append(mean_row("overopt/gold", chosen_g, **extra))
        rows.append(mean_row("overopt/proxy", chosen_p, **extra))

    # --- 6. PPO ----------------------------------------------------------------------------------------------
    ppo_cfg = opts.ppo_config()
    policy = nnx.merge(graphdef, sft_params)
    # The value head: on the policy's trunk, or on a critic of its own that starts as the reward model.
    critic = policy if opts.critic == "shared" else nnx.merge(graphdef, rm_params)
    if opts.value_init == "reward_model":
        init_value_head(critic, "value", reward_model, "reward")
    else:
        init_value_head(critic, "value")
    trained = policy if opts.critic == "shared" else ActorCritic(policy, critic)
    updates = opts.rounds * opts.ppo_iterations * ppo_cfg.epochs * ppo_cfg.minibatches
    ppo_train = TrainConfig(
        steps=updates,
        learning_rate=opts.ppo_learning_rate,
        warmup_steps=0,
        grad_clip=cfg.train.grad_clip,
        weight_decay=0.0,
        b1=cfg.train.b1,
        b2=cfg.train.b2,
    )
    tx = make_optimizer(ppo_train)
    if opts.critic == "separate":
        critic_lr = opts.critic_learning_rate or opts.ppo_learning_rate
        tx = actor_critic_optimizer(
            tx, make_optimizer(dataclasses.replace(ppo_train, learning_rate=critic_lr))
        )
    ppo_graphdef, ppo_state, ppo_shardings = train_state_from_model(trained, tx, mesh, rules)

    def current_policy(state):
        return actor_and_critic(nnx.merge(ppo_graphdef, state)[0])[0]

    n_roll = opts.rollout_batch

    score_rollout, advantages = make_rollout_phases(ppo_graphdef, graphdef, ppo_cfg, stop, opts.rm_generative)

    update = make_ppo_update(ppo_graphdef, ppo_cfg, n_roll, ppo_shardings, mesh, rules)

    policy_sampler = make_sampler(policy, n_roll)
    eval_set = eval_problems[: opts.eval_prompts]
    eval_sampler = make_sampler(sft_model, len(eval_set))
    sft_eval = sample_texts(eval_sampler, eval_set, jax.random.key(cfg.seed + 41))
    sft_eval_gold = np.asarray([gold_reward(task, p, t) for p, t in zip(eval_set, sft_eval[3], strict=True)])
    rows.append(mean_row("sft/gold_reward", sft_eval_gold, **common))
    rows.append(proportion_row("sft/gold_accuracy", int((sft_eval_gold == 1).sum()), len(eval_set), **common))

    def evaluate(state, rm_params):
        """Policy samples on held-out prompts: gold, proxy, KL from SFT, and the win rate over SFT answers."""
        eval_sampler.update(current_policy(state))
        prompts, tokens, mask, texts = sample_texts(eval_sampler, eval_set, jax.random.key(cfg.seed + 43))
        p, pm = (jnp.asarray(x) for x in left_pad(prompts, prompt_len, tokenizer.pad_id))
        scored = score_rollout(state, sft_params, rm_params, p, pm, jnp.asarray(tokens), jnp.asarray(mask))
        g = np.asarray([gold_reward(task, q, t) for q, t in zip(eval_set, texts, strict=True)])
        win = np.where(g > sft_eval_gold, 1.0, np.where(g == sft_eval_gold, 0.5, 0.0))
        stopped = float(
            np.mean([tokenizer.eos_id in t[m.astype(bool)] for t, m in zip(tokens, mask, strict=True)])
        )
        return {
            "gold": g,
            "win": win,
            "proxy": np.asarray(scored["proxy"]),
            "kl": np.asarray(scored["kl"]),
            "metrics": {
                "gold/reward": float(g.mean()),
                "gold/accuracy": float((g == 1).mean()),
                "gold/win_rate": float(win.mean()),
                "gold/proxy_reward": float(np.mean(scored["proxy"])),
                "gold/kl": float(np.mean(scored["kl"])),
                "gold/stop_fraction": stopped,
            },
        }

    def overopt_rows(ev, it: int) -> list[dict]:
        extra = {"method": "ppo", "N": None, "kl": float(ev["kl"].mean()), "step": it, **common}
        return [
            mean_row("overopt/gold", ev["gold"], **extra),
            mean_row("overopt/proxy", ev["proxy"], **extra),
        ]

    kl_ctl = AdaptiveKLController.from_config(ppo_cfg)
    base_key = jax.random.key(cfg.seed + 53)
    rl_prompts = tokenize_problems(rl_problems, tokenizer)[0]

    def ppo_round(ppo_state, rm_params, round_no: int, history: list[dict]):
        """One round's PPO iterations against `rm_params`, checkpointed under `ppo` (round 1) or `ppo_<round>`
        with the KL coefficient and the over-optimisation rows so far; a killed round resumes where it was.
        Returns (state, history, the last evaluation or None if nothing was left to run)."""
        first = (round_no - 1) * opts.ppo_iterations  # PPO iterations of the earlier rounds
        offset = sft_steps + (round_no - 1) * round_steps + opts.rm_steps
        checkpointer = Checkpointer(
            ckpt / ("ppo" if round_no == 1 else f"ppo_{round_no}"), keep=cfg.train.keep_checkpoints
        )
        start = 0
        latest = checkpointer.latest_step()
        if latest:
            ppo_state, meta = checkpointer.restore(latest, abstract_like(ppo_state))
            start, kl_ctl.value, history = meta["iteration"], meta["kl_coef"], meta["overopt"]
        if start == 0 and round_no == 1:
            ev = evaluate(ppo_state, rm_params)
            ctx.tracker.log(ev["metrics"], step=offset)
            history = overopt_rows(ev, 0)
        desc = "ppo" if round_no == 1 else f"ppo, round {round_no}"
        bar = tqdm(
            total=opts.ppo_iterations,
            initial=start,
            desc=desc,
            unit="it",
            dynamic_ncols=True,
            mininterval=1.0,
        )
        ev = None
        for it in range(start, opts.ppo_iterations):
            step = first + it  # over all rounds: keys and prompt draws never repeat
            key = jax.random.fold_in(base_key, step)
            rng = np.random.default_rng([cfg.seed, step])
            idx = rng.choice(len(rl_problems), n_roll, replace=False)
            batch_problems = [rl_problems[i] for i in idx]
            prompts = [rl_prompts[i] for i in idx]
            policy_sampler.update(current_policy(ppo_state))
            out = policy_sampler.sample(prompts, jax.random.fold_in(key, 0))
            p, pm = (jnp.asarray(x) for x in left_pad(prompts, prompt_len, tokenizer.pad_id))
            response, response_mask = out.tokens, out.mask
            scored = score_rollout(ppo_state, sft_params, rm_params, p, pm, response, response_mask)
            adv = advantages(scored, response_mask, jnp.float32(kl_ctl.value))
            rollout = rollout_batch(p, pm, response, response_mask, scored, adv)
            rollout = jax.device_put(rollout, batch_sharding(mesh, rules))  # rows over the mesh's batch axes
            ppo_state, stats = update(ppo_state, rollout, jax.random.fold_in(key, 1))
            stats = {k_: float(v) for k_, v in jax.device_get(stats).items()}
            if not all(np.isfinite(v) for v in stats.values()):
                raise FloatingPointError(
                    f"ppo: non-finite loss at iteration {it + 1} of round {round_no}; last good checkpoint: "
                    f"{checkpointer.latest_step()}"
                )
            texts = decode_responses(tokenizer, np.asarray(response), np.asarray(response_mask))
            rollout_gold = np.mean(
                [gold_reward(task, q, t) for q, t in zip(batch_problems, texts, strict=True)]
            )
            roll_stats = {k_: float(v) for k_, v in jax.device_get(adv["stats"]).items()}
            done = it + 1
            metrics = {
                "ppo/kl": roll_stats["objective/kl"],
                "ppo/score": roll_stats["objective/scores"],
                "ppo/proxy_reward": float(np.mean(scored["proxy"])),
                "ppo/non_score_reward": roll_stats["objective/non_score_reward"],
                "ppo/response_length": roll_stats["objective/response_length"],
                "ppo/kl_coef": kl_ctl.value,
                "ppo/gold_reward": float(rollout_gold),
                **{f"ppo/{k_.replace('/', '_')}": v for k_, v in stats.items()},
            }
            kl_ctl.update(roll_stats["objective/kl"], n_roll)
            ctx.tracker.log(metrics, step=offset + done)
            if done % opts.eval_every == 0 or done == opts.ppo_iterations:
                ev = evaluate(ppo_state, rm_params)
                ctx.tracker.log(ev["metrics"], step=offset + done)
                history += overopt_rows(ev, first + done)
            if done % opts.checkpoint_every == 0 or done == opts.ppo_iterations:
                meta = {"iteration": done, "kl_coef": kl_ctl.value, "overopt": history}
                checkpointer.save(offset + done, ppo_state, meta)
            bar.update(1)
            bar.set_postfix(kl=f"{metrics['ppo/kl']:.2f}", gold=f"{rollout_gold:.3f}", refresh=False)
        bar.close()
        checkpointer.close()
        return ppo_state, history, ev

    ppo_state, history, ev = ppo_round(ppo_state, rm_params, 1, [])
    # --- 7. further rounds (InstructGPT's iteration): comparisons of the current policy's samples, ranked by
    # the same labeller and added to the earlier ones; the reward model trained on from where it was; PPO on.
    train_compare = compare_problems[:-n_heldout]
    for round_no in range(2, opts.rounds + 1):
        round_sampler = make_sampler(current_policy(ppo_state), chunk)
        _, _, _, texts = sample_texts(
            round_sampler, train_compare, jax.random.key(cfg.seed + 17 + round_no), k, chunk
        )
        train_rank = train_rank + labeller.collect(
            train_compare, [texts[i * k : (i + 1) * k] for i in range(len(train_compare))]
        )
        reward_model = fit_reward_model(reward_model, pack(train_rank), round_no)
        rm_params = normalised(reward_model, round_no)
        ppo_state, history, ev = ppo_round(ppo_state, rm_params, round_no, history)

    # --- results ---------------------------------------------------------------------------------------------
    if ev is None:  # a resumed run that had already finished PPO: re-measure the final policy
        ev = evaluate(ppo_state, rm_params)
    rows += history
    rows.append(mean_row("ppo/gold_reward", ev["gold"], **common))
    rows.append(proportion_row("ppo/gold_accuracy", int((ev["gold"] == 1).sum()), len(eval_set), **common))
    rows.append(mean_row("gold/win_rate", ev["win"], **common))
    wins, losses = int((ev["win"] == 1).sum()), int((ev["win"] == 0).sum())
    rows.append(proportion_row("gold/win_rate_decisive", wins, wins + losses, **common))
    ctx.tracker.table("results", rows)
    summary = {
        r["metric"]: r["value"]
        for r in rows
        if r["metric"].split("/")[0] in ("rm", "labeller", "sft", "ppo", "gold")
    }
    ctx.tracker.summary(summary)
    win_row = next(r for r in rows if r["metric"] == "gold/win_rate")
    print(
        f"labeller agreement with gold {summary['labeller/gold_agreement']:.3f}   RM accuracy on gold pairs "
        f"{summary['rm/accuracy_gold']:.3f}   gold reward SFT {summary['sft/gold_reward']:.3f} -> PPO "
        f"{summary['ppo/gold_reward']:.3f}   win rate {win_row['value']:.3f} "
        f"[{win_row['ci_low']:.3f}, {win_row['ci_high']:.3f}]   run folder {ctx.run_dir}"
    )


EXPERIMENT = Experiment(
    name="rlhf",
    description="SFT -> simulated-labeller rankings -> reward model -> PPO, scored by gold; best-of-N over-optimisation.",
    options=RLHFOptions,
    run=run,
)
