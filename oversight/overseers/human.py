"""A simulated human labeller with an explicit, configurable capacity.

The labeller looks at a response one unit (step, digit, position, clause, line) at a time. Each look is the
task's gold local check (`Task.unit_checks`) seen through noise: a wrong unit is missed with probability
`miss_rate`, a right unit looks wrong with probability `false_alarm_rate`. It can afford `budget` looks per
response, taken in order from the top or at random, and it uses critiques as configured (look first where they
point, believe them outright, or ignore them). It prefers responses in which it found no flaw.

Because every ingredient is explicit, its expected behaviour has a closed form (`detection_rate`,
`gold_agreement`), which the tests check the simulation against, and its agreement with gold can be tuned to a
target (`error_rate_for_agreement`; InstructGPT's labellers agreed with each other about 73% of the time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oversight.overseers.base import (
    Assistance,
    FlawReport,
    Judgement,
    Overseer,
    check_responses,
    critiques_for,
    rank,
    task_for,
)
from oversight.settings import check_fields, setting
from oversight.tasks.base import Critique, Problem, Task

ORDERS = ("random", "in_order")
ASSISTANCE_MODES = ("check_first", "trust", "ignore")


@dataclass(frozen=True)
class HumanCapacity:
    """What a simulated labeller can do per response."""

    # units it can check per response
    budget: int = setting(4, ge=0)
    # per check: probability a wrong unit looks right
    miss_rate: float = setting(0.0, ge=0, le=1)
    # per check: probability a right unit looks wrong
    false_alarm_rate: float = setting(0.0, ge=0, le=1)
    # which units it checks: "random" (a random subset) or "in_order" (the first `budget` units)
    order: str = setting("random", choices=ORDERS)
    # how it uses critiques: "check_first" (checks the units they point at first, within budget),
    # "trust" (marks those units wrong without checking, then spends its budget elsewhere), "ignore"
    assistance: str = setting("check_first", choices=ASSISTANCE_MODES)

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int):
            raise ValueError(f"budget must be an int, got {self.budget!r}")
        check_fields(self)

    @classmethod
    def with_error_rate(cls, error_rate: float, **kwargs) -> HumanCapacity:
        """One per-check error rate for both kinds of mistake."""
        return cls(miss_rate=error_rate, false_alarm_rate=error_rate, **kwargs)


class SimulatedHuman(Overseer):
    """A capacity-limited labeller built on the task's gold local checks plus noise."""

    def __init__(
        self, capacity: HumanCapacity | None = None, task: Task | None = None, seed: int = 0
    ) -> None:
        # what it can do per response
        self.capacity = capacity or HumanCapacity()
        # the task to check against; None looks it up from each problem's `task` name
        self.task = task
        self._rng = np.random.default_rng(seed)

    def review(
        self,
        problem: Problem,
        response: str,
        critiques: Sequence[Critique | str] = (),
        task: Task | None = None,
    ) -> FlawReport:
        """Check one response within budget; the units it flags and the units it looked at."""
        task = task or task_for(problem, self.task)
        cap, rng = self.capacity, self._rng
        truth = task.unit_checks(problem, response)
        n = len(truth)
        pointed: list[int] = []
        if cap.assistance != "ignore":
            for c in critiques:
                c = task.parse_critique(c) if isinstance(c, str) else c
                if (
                    c is not None
                    and c.location is not None
                    and 0 <= c.location < n
                    and c.location not in pointed
                ):
                    pointed.append(c.location)
        flagged = list(pointed) if cap.assistance == "trust" else []
        rest = [u for u in range(n) if u not in pointed]
        if cap.order == "random":
            rest = [rest[i] for i in rng.permutation(len(rest))]
        queue = (pointed if cap.assistance == "check_first" else []) + rest
        checked = queue[: cap.budget]
        for u in checked:
            draw = rng.random()
            looks_wrong = draw >= cap.miss_rate if not truth[u] else draw < cap.false_alarm_rate
            if looks_wrong:
                flagged.append(u)
        return FlawReport(bool(flagged), tuple(flagged), tuple(checked))

    def judge(
        self, problem: Problem | str, responses: Sequence[str], assistance: Assistance | None = None
    ) -> Judgement:
        """Reviews each response; score 1 if it found no flaw, else 0; ranking by score, ties at random."""
        task = task_for(problem, self.task)
        responses = check_responses(responses)
        critiques = critiques_for(assistance, len(responses))
        reports = tuple(self.review(problem, r, c, task) for r, c in zip(responses, critiques, strict=True))
        scores = np.asarray([0.0 if r.flawed else 1.0 for r in reports])
        return Judgement(scores, rank(scores, self._rng), reports)


# ----------------------------------------------------------------------------------------------------------
# Closed forms (random order, one wrong unit among `n_units`): what the simulation should measure


def detection_rate(capacity: HumanCapacity, n_units: int, critique_points_at_flaw: bool = False) -> float:
    """Probability the labeller flags the one wrong unit of a response with `n_units` units.

    Random order: it checks min(budget, n) of n units, so it looks at the wrong one with probability
    min(budget, n) / n and then catches it with probability 1 - miss_rate. With a critique pointing at the
    flaw: 1 - miss_rate when it checks critiqued units first (budget >= 1), 1 when it trusts them.
    """
    _check_units(n_units)
    b = min(capacity.budget, n_units)
    if critique_points_at_flaw and capacity.assistance == "trust":
        return 1.0
    if critique_points_at_flaw and capacity.assistance == "check_first":
        return (1.0 - capacity.miss_rate) if b >= 1 else 0.0
    if capacity.order == "in_order":
        raise ValueError("in_order detection depends on where the flaw is: use detection_rate_at")
    return b / n_units * (1.0 - capacity.miss_rate)


def detection_rate_at(capacity: HumanCapacity, n_units: int, location: int) -> float:
    """Like `detection_rate` for a flaw at a known unit, unassisted (any order)."""
    _check_units(n_units)
    b = min(capacity.budget, n_units)
    if capacity.order == "in_order":
        return (1.0 - capacity.miss_rate) if location < b else 0.0
    return b / n_units * (1.0 - capacity.miss_rate)


def flag_rate(capacity: HumanCapacity, n_units: int, n_wrong: int) -> float:
    """Probability the labeller flags *anything* in a response with `n_wrong` of `n_units` units wrong (random
    order, unassisted): one minus the chance every look at a wrong unit misses and every other look passes."""
    _check_units(n_units)
    if capacity.order != "random":
        raise ValueError("flag_rate is the closed form for order='random'")
    b = min(capacity.budget, n_units)
    miss, fa = capacity.miss_rate, capacity.false_alarm_rate
    # hypergeometric: k of the b looks land on wrong units
    total = math.comb(n_units, b)
    quiet = sum(
        math.comb(n_wrong, k) * math.comb(n_units - n_wrong, b - k) / total * miss**k * (1 - fa) ** (b - k)
        for k in range(0, min(b, n_wrong) + 1)
    )
    return 1.0 - quiet


def gold_agreement(capacity: HumanCapacity, n_units: int) -> float:
    """Probability the labeller's preference between a correct response and one with a single wrong unit (both
    `n_units` long) agrees with gold, ties broken by a coin: 1/2 + (P[flags flawed] - P[flags clean]) / 2."""
    return 0.5 + 0.5 * (flag_rate(capacity, n_units, 1) - flag_rate(capacity, n_units, 0))


def inter_labeller_agreement(gold_agreement_rate: float) -> float:
    """Two independent labellers who each agree with gold at rate a agree with each other at a^2 + (1-a)^2."""
    a = gold_agreement_rate
    return a * a + (1 - a) * (1 - a)


def error_rate_for_agreement(
    target: float, budget: int, n_units: int, between: str = "gold", **capacity_options
) -> float:
    """The per-check error rate (misses = false alarms) at which labellers of this budget reach `target`
    agreement, either with gold (`between="gold"`) or with each other (`between="labellers"`).

    Agreement falls monotonically as the error rate rises from 0 to 1/2, so bisection finds it. A target above
    what an error-free labeller of this budget reaches is an error: raise the budget instead.
    """
    if between not in ("gold", "labellers"):
        raise ValueError(f"between must be 'gold' or 'labellers', got {between!r}")
    if between == "labellers":
        if not 0.5 <= target <= 1.0:
            raise ValueError(f"inter-labeller agreement must be in [0.5, 1], got {target}")
        target = 0.5 + math.sqrt(max(0.0, 2 * target - 1)) / 2  # invert a^2 + (1-a)^2 on a >= 1/2

    def agreement(e: float) -> float:
        return gold_agreement(HumanCapacity.with_error_rate(e, budget=budget, **capacity_options), n_units)

    best = agreement(0.0)
    if not 0.5 <= target <= best + 1e-12:
        raise ValueError(
            f"agreement {target:.3f} is out of reach for budget {budget} of {n_units} units "
            f"(error-free labellers reach {best:.3f}, coin-flippers 0.5)"
        )
    low, high = 0.0, 0.5
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if agreement(mid) > target else (low, mid)
    return (low + high) / 2


def _check_units(n_units: int) -> None:
    if n_units < 1:
        raise ValueError(f"n_units must be >= 1, got {n_units}")
