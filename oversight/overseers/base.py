"""The overseer interface: given a prompt and responses (optionally with assistance), return a judgement.

One `Judgement` carries every form of feedback a protocol may want: a score per response, the ranking and
preference they imply, and a flaw report per response. Overseers differ in what stands behind it: gold (the
task's checker), a capacity-limited simulated human, or a learned judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oversight.tasks.base import Critique, Problem, Task, get_task


@dataclass(frozen=True)
class FlawReport:
    """What an overseer says is wrong with one response."""

    # the overseer judges the response flawed
    flawed: bool
    # units it reports as wrong, in the order it found them (empty for a learned judge: it has no pointer)
    locations: tuple[int, ...] = ()
    # units it examined; len(checked) is what the judgement cost
    checked: tuple[int, ...] = ()

    @property
    def location(self) -> int | None:
        """The first unit reported wrong (in unit order), or None."""
        return min(self.locations) if self.locations else None


@dataclass(frozen=True)
class Assistance:
    """Help shown to the overseer alongside the responses."""

    # per response, the critiques shown with it (Critique objects or critique text in the task's format)
    critiques: Sequence[Sequence[Critique | str]] = ()


@dataclass(frozen=True)
class Judgement:
    """An overseer's verdict on the responses to one prompt."""

    # one score per response, higher is better
    scores: np.ndarray
    # response indices, best first (ties broken at random by the overseer's seed)
    ranking: tuple[int, ...]
    # per response, the flaw report; None where the overseer does not report flaws
    flaws: tuple[FlawReport | None, ...]

    @property
    def preference(self) -> int:
        """Index of the preferred response."""
        return self.ranking[0]


class Overseer:
    """Base class: `judge(problem, responses, assistance=None) -> Judgement`."""

    def judge(
        self, problem: Problem | str, responses: Sequence[str], assistance: Assistance | None = None
    ) -> Judgement:
        raise NotImplementedError


def rank(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """Indices by descending score; equal scores in random order (a fixed order would leak position)."""
    scores = np.asarray(scores, dtype=np.float64)
    tiebreak = rng.permutation(len(scores))
    return tuple(int(i) for i in np.lexsort((tiebreak, -scores)))


def check_responses(responses: Sequence[str]) -> list[str]:
    """The responses as a list of strings; at least one."""
    if isinstance(responses, str):
        raise TypeError("responses must be a sequence of strings, not one string")
    responses = list(responses)
    if not responses:
        raise ValueError("an overseer needs at least one response")
    for r in responses:
        if not isinstance(r, str):
            raise TypeError(f"responses must be strings, got {type(r).__name__}")
    return responses


def task_for(problem: Problem | str, task: Task | None) -> Task:
    """The task whose gold checker applies to `problem` (the given one, or the registered one by name)."""
    if not isinstance(problem, Problem):
        raise TypeError("this overseer needs the Problem (its ground truth), not only the prompt text")
    if task is None:
        return get_task(problem.task)
    if task.name != problem.task:
        raise ValueError(f"problem {problem.id!r} is from task {problem.task!r}, not {task.name!r}")
    return task


def critiques_for(assistance: Assistance | None, n_responses: int) -> list[list[Critique | str]]:
    """Per response, the critiques shown with it (empty lists when there is no assistance)."""
    if assistance is None or not assistance.critiques:
        return [[] for _ in range(n_responses)]
    if len(assistance.critiques) != n_responses:
        raise ValueError(
            f"assistance has critiques for {len(assistance.critiques)} responses, not {n_responses}"
        )
    return [list(c) for c in assistance.critiques]
