"""Critique assistance: does a capacity-limited overseer find more flaws when shown model critiques, at the
same budget? (Saunders et al. 2022's randomised comparison; published anchor: about 50% more flaws found.)

    oversight experiment=critique_assist                          # +- chains, a few minutes on 2 CPU cores
    oversight -m experiment=critique_assist task=arithmetic_pm,addition   # the comparison on two tasks

A critique model is trained as in `gdc_gap` (`oversight.experiments.critique`), then a simulated overseer
(`SimulatedHuman`: `budget` local checks per response, per-check miss and false-alarm rates, reading units
`in_order` from the top by default) reviews the same held-out responses in these arms:

- `unassisted`: no critiques;
- `assisted`: `k` critiques sampled from the model (temperature 1), shown in the order of the model's own
  helpfulness head; the overseer checks the units they point at first, within the same budget;
- `gold_critique`: the true critique of the injected flaw ("no flaw" on clean responses), the ceiling of
  what a critique can do for this overseer;
- controls, pointers that know nothing of the response's content: `last_unit` (one critique pointing at its
  last unit) and `random_unit` (at a unit drawn at random). A critic is worth what it finds beyond them; the
  misleading set's flaws sit on late units, so there `last_unit` is the bar to clear.

Three response sets: `clean` (reference solutions, for false alarms), `flawed` (one injected flaw where
the injector puts it), and `misleading`: per problem, of `misleading_draws` injected flaws, the one placed
last, where a reader who checks from the top runs out of budget — the simulated counterpart of the
deliberately misleading answers Saunders et al. had humans write.

Results (`results.jsonl`, 95% intervals): per set and arm, `assist/found` (the overseer names the injected
flaw's unit), `assist/flagged` (it judges the response flawed), `assist/false_alarm` on clean responses;
per set, `assist/found_difference` = found(assisted) − found(unassisted), `assist/relative_increase` =
found(assisted) / found(unassisted) − 1 (paired bootstraps; the ratio is undefined when the unassisted
overseer finds nothing), `assist/found_over_control` = found(assisted) − found(control) per control arm, and
`assist/critiques_valid` (shown critiques that gold confirms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import jax
import numpy as np

from oversight.experiments.critique import gold_critique_text, train_critique_model
from oversight.overseers import HumanCapacity, SimulatedHuman
from oversight.protocols import ReviewOutcome, critique_review
from oversight.registry import Experiment, RunContext
from oversight.settings import setting
from oversight.stats import bootstrap_row, proportion_row
from oversight.tasks.base import Critique, LabelledResponse, Problem, Task

# Pointer arms that know nothing of the response's content (see the module docstring).
CONTROLS = ("last_unit", "random_unit")
ARMS = ("unassisted", "assisted", "gold_critique", *CONTROLS)


@dataclass
class CritiqueAssistOptions:
    # Held-out problems per response set (clean, flawed, misleading).
    responses_per_set: int = setting(128, ge=1)
    # Critiques shown per response in the assisted arm.
    k: int = setting(4, ge=1)
    # Injected flaws drawn per problem to pick the misleading (last-placed) one from.
    misleading_draws: int = setting(8, ge=1)
    # The overseer: local checks per response, per-check error rates, the order it reads units in; it checks
    # the units critiques point at first (`assistance`).
    overseer: HumanCapacity = field(default_factory=HumanCapacity)
    # Generation budget of answers (critiques are short).
    max_new_tokens: int = setting(16, ge=1)


def misleading_response(task: Task, problem: Problem, draws: int, seed: int) -> LabelledResponse:
    """Of `draws` injected flaws, the one placed last (ties: the first drawn)."""
    best = None
    for i in range(draws):
        text, record = task.inject_flaw(problem, seed=seed * 1_000 + i)
        if best is None or record.location > best.flaw.location:
            best = LabelledResponse(problem, text, record)
    return best


def assistance_rows(
    set_name: str, outcomes: dict[str, ReviewOutcome], flawed: bool, bootstrap_seed: int = 0, **extra
) -> list[dict]:
    """Rows for one response set: found/flagged (flawed sets) or false alarms (clean), per arm, and the
    difference and relative increase in flaws found with model critiques."""
    rows = []
    for arm, out in outcomes.items():
        n = len(out.flagged)
        if flawed:
            rows.append(
                proportion_row("assist/found", int(out.found.sum()), n, set=set_name, arm=arm, **extra)
            )
            rows.append(
                proportion_row("assist/flagged", int(out.flagged.sum()), n, set=set_name, arm=arm, **extra)
            )
        else:
            rows.append(
                proportion_row(
                    "assist/false_alarm", int(out.flagged.sum()), n, set=set_name, arm=arm, **extra
                )
            )
    if flawed:

        def assisted_against(metric: str, baseline: str, stat, arm: str) -> dict:
            """A paired bootstrap row of `stat` over (assisted, baseline) found flags, per response."""
            pairs = np.stack([outcomes["assisted"].found, outcomes[baseline].found], axis=1).astype(float)
            return bootstrap_row(
                metric, pairs, stat, bootstrap_seed=bootstrap_seed, set=set_name, arm=arm, **extra
            )

        def difference(x: np.ndarray) -> float:
            return x[:, 0].mean() - x[:, 1].mean()

        def relative_increase(x: np.ndarray) -> float:
            base = x[:, 1].mean()
            return x[:, 0].mean() / base - 1.0 if base > 0 else float("nan")

        rows += [
            assisted_against("assist/found_over_control", control, difference, arm=control)
            for control in CONTROLS
            if control in outcomes
        ]
        rows.append(assisted_against("assist/found_difference", "unassisted", difference, arm="assisted"))
        rows.append(
            assisted_against("assist/relative_increase", "unassisted", relative_increase, arm="assisted")
        )
    return rows


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    task, eval_problems, _, cm = train_critique_model(
        ctx,
        opts.max_new_tokens,
        held_out_needed=2 * opts.responses_per_set,
        needed_by=f"experiment.responses_per_set={opts.responses_per_set} (two sets of held-out problems)",
    )
    key = ctx.key("critiques")

    # Response sets: the first half of the held-out problems gives clean and flawed responses, the second
    # half misleading ones (no problem appears flawed twice).
    n = opts.responses_per_set
    first, second = eval_problems[:n], eval_problems[n : 2 * n]
    sets = {
        "clean": [LabelledResponse(p, p.solution, None) for p in first],
        "flawed": task.labelled_responses(first, seed=ctx.seed("responses/flawed"), flawed_fraction=1.0),
        "misleading": [
            misleading_response(task, p, opts.misleading_draws, ctx.seed(f"responses/misleading/{i}"))
            for i, p in enumerate(second)
        ],
    }
    common = {"task": task.name, "difficulty": cfg.task.difficulty, "k": opts.k}
    common |= {"budget": opts.overseer.budget, "order": opts.overseer.order}
    rows: list[dict] = []
    for s, (set_name, items) in enumerate(sets.items()):
        # k sampled critiques per response, one batch
        problems = [it.problem for it in items for _ in range(opts.k)]
        responses = [it.response for it in items for _ in range(opts.k)]
        sampled = cm.critiques(problems, responses, jax.random.fold_in(key, s), temperature=1.0)
        # shown most-helpful first, by the model's own helpfulness head (as Saunders et al. ranked critiques):
        # an overseer that checks where critiques point spends its budget on the best-rated first
        helpful = cm.helpful_probability(problems, responses, sampled).reshape(len(items), opts.k)
        model_critiques = [
            [sampled[i * opts.k + j] for j in np.argsort(-helpful[i], kind="stable")]
            for i in range(len(items))
        ]
        valid = [
            task.check_critique(p, r, c).valid for p, r, c in zip(problems, responses, sampled, strict=True)
        ]
        rows.append(
            proportion_row("assist/critiques_valid", int(sum(valid)), len(valid), set=set_name, **common)
        )
        shown = {
            "unassisted": [[] for _ in items],
            "assisted": model_critiques,
            "gold_critique": [[gold_critique_text(task, it)] for it in items],
        }
        units = [max(1, len(task.unit_checks(it.problem, it.response))) for it in items]
        pick = random.Random(ctx.seed(f"controls/{set_name}"))
        shown["last_unit"] = [[Critique(u - 1)] for u in units]
        shown["random_unit"] = [[Critique(pick.randrange(u))] for u in units]
        # every arm's overseer starts from the same seed: the arms differ only in the critiques shown
        overseer_seed = ctx.seed(f"overseer/{set_name}")
        outcomes = {
            arm: critique_review(
                SimulatedHuman(opts.overseer, task, seed=overseer_seed), task, items, shown[arm]
            )
            for arm in ARMS
        }
        rows += assistance_rows(set_name, outcomes, set_name != "clean", bootstrap_seed=cfg.seed, **common)

    ctx.tracker.table("results", rows)
    ctx.tracker.summary(
        {f"{r['metric']}/{r['set']}/{r.get('arm', '')}".rstrip("/"): r["value"] for r in rows}
    )


EXPERIMENT = Experiment(
    name="critique_assist",
    description="Flaws a capacity-limited overseer finds with vs without model critiques, at equal budget.",
    options=CritiqueAssistOptions,
    run=run,
)
