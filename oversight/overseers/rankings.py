"""Turn any overseer into K-way rankings for reward-model training (InstructGPT: K = 4..9 per prompt).

A reward model trained on rankings uses all K-choose-2 pairs of one prompt as one batch element
(`Ranking.pairs`). The collector shows the overseer K responses in a random order, so that nothing about the
position of a response can leak into its label, and records the overseer's ranking.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from oversight.errors import require
from oversight.overseers.base import Assistance, Overseer
from oversight.tasks.base import Problem, Task

# K-way rankings: at least a pair, at most InstructGPT's nine
MIN_K, MAX_K = 2, 9


@dataclass(frozen=True)
class Ranking:
    """K responses to one prompt and an overseer's ranking of them."""

    # the problem the responses answer
    problem_id: str
    # the prompt the reward model conditions on
    prompt: str
    # the responses, in the order they were shown to the overseer
    responses: tuple[str, ...]
    # indices into `responses`, best first
    order: tuple[int, ...]
    # the overseer's score per response (same order as `responses`)
    scores: tuple[float, ...]

    @property
    def k(self) -> int:
        return len(self.responses)

    def ranked(self) -> list[str]:
        """The responses, best first."""
        return [self.responses[i] for i in self.order]

    def pairs(self) -> list[tuple[int, int]]:
        """All K-choose-2 (better, worse) index pairs implied by the ranking."""
        return [(self.order[a], self.order[b]) for a in range(self.k) for b in range(a + 1, self.k)]

    def to_record(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id,
            "prompt": self.prompt,
            "responses": list(self.responses),
            "order": list(self.order),
            "scores": [float(s) for s in self.scores],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Ranking:
        ranking = cls(
            str(record["problem_id"]),
            str(record["prompt"]),
            tuple(record["responses"]),
            tuple(int(i) for i in record["order"]),
            tuple(float(s) for s in record["scores"]),
        )
        if sorted(ranking.order) != list(range(ranking.k)) or len(ranking.scores) != ranking.k:
            raise ValueError(
                f"ranking of {ranking.problem_id!r}: 'order' must be a permutation of the responses"
            )
        return ranking


def rankings_to_dataset(rankings: Sequence[Ranking]):
    """A `datasets.Dataset` with one row per ranking (`datasets` is optional: the `datasets` extra)."""
    datasets = require("datasets", "datasets", "rankings_to_dataset")

    return datasets.Dataset.from_list([r.to_record() for r in rankings])


def pairwise_agreement(a: Ranking, b: Ranking) -> float:
    """Fraction of response pairs that two rankings of the same responses order the same way."""
    if sorted(a.responses) != sorted(b.responses):
        raise ValueError("the two rankings are of different responses")
    # compare by text so the rankings may have been shown in different orders
    pos_a = {a.responses[i]: r for r, i in enumerate(a.order)}
    pos_b = {b.responses[i]: r for r, i in enumerate(b.order)}
    texts = list(a.responses)
    pairs = [(x, y) for i, x in enumerate(texts) for y in texts[i + 1 :] if x != y]
    if not pairs:
        return 1.0
    same = sum((pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y]) for x, y in pairs)
    return same / len(pairs)


class RankingCollector:
    """Collects K-way rankings from an overseer."""

    def __init__(self, overseer: Overseer, k: int, seed: int = 0) -> None:
        if not isinstance(k, int) or not MIN_K <= k <= MAX_K:
            raise ValueError(f"k must be an int in {MIN_K}..{MAX_K}, got {k!r}")
        # the overseer whose judgements become rankings
        self.overseer = overseer
        # responses per ranking
        self.k = k
        self._rng = random.Random(seed)

    def rank_one(
        self, problem: Problem | str, responses: Sequence[str], assistance: Assistance | None = None
    ) -> Ranking:
        """Show K of `responses` (a random K if there are more) in a random order; record the ranking."""
        responses = list(responses)
        if len(responses) < self.k:
            raise ValueError(f"need at least k={self.k} responses, got {len(responses)}")
        chosen = self._rng.sample(range(len(responses)), self.k)  # a random subset in a random order
        shown = [responses[i] for i in chosen]
        if assistance is not None and assistance.critiques:
            if len(assistance.critiques) != len(responses):
                raise ValueError(
                    f"assistance has critiques for {len(assistance.critiques)} of {len(responses)} responses"
                )
            assistance = Assistance([assistance.critiques[i] for i in chosen])
        judgement = self.overseer.judge(problem, shown, assistance)
        prompt = problem.prompt if isinstance(problem, Problem) else problem
        problem_id = problem.id if isinstance(problem, Problem) else ""
        scores = tuple(float(s) for s in np.asarray(judgement.scores).reshape(-1))
        return Ranking(problem_id, prompt, tuple(shown), tuple(judgement.ranking), scores)

    def collect(
        self,
        problems: Sequence[Problem | str],
        responses: Sequence[Sequence[str]],
        assistance: Sequence[Assistance | None] | None = None,
    ) -> list[Ranking]:
        """One ranking per problem, from that problem's responses (and assistance, if given)."""
        if len(problems) != len(responses):
            raise ValueError(f"{len(problems)} problems but {len(responses)} response lists")
        if assistance is not None and len(assistance) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(assistance)} assistance entries")
        help_ = assistance if assistance is not None else [None] * len(problems)
        return [self.rank_one(p, r, a) for p, r, a in zip(problems, responses, help_, strict=True)]

    def collect_from_flaws(self, task: Task, problems: Sequence[Problem], seed: int = 0) -> list[Ranking]:
        """Rankings of the reference solution against K - 1 flawed copies of it (distinct where possible).

        Reward-model training data from a task alone, before any policy exists.
        """
        return self.collect(
            problems, [flawed_variants(task, p, self.k - 1, seed) + [p.solution] for p in problems]
        )


def flawed_variants(task: Task, problem: Problem, n: int, seed: int = 0) -> list[str]:
    """`n` flawed copies of the reference solution, distinct when the task can make that many."""
    out: list[str] = []
    for attempt in range(20 * max(n, 1)):
        if len(out) == n:
            break
        text, _ = task.inject_flaw(problem, seed=seed * 1_000_003 + attempt)
        if text not in out or attempt >= 10 * n:  # after many tries, accept repeats rather than fail
            out.append(text)
    return out
