"""The gold oracle: the task's own checker as an overseer, the ceiling every other overseer is scored on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oversight.overseers.base import (
    Assistance,
    FlawReport,
    Judgement,
    Overseer,
    check_responses,
    rank,
    task_for,
)
from oversight.tasks.base import Problem, Task


class GoldOverseer(Overseer):
    """Checks every unit of every response with the task's gold checker; ignores assistance.

    Score: 1 for a correct response; otherwise the fraction of units passing, scaled below 1
    (`passing / (units + 1)`), so fewer wrong units rank higher and no flawed response ties a correct one.
    """

    def __init__(self, task: Task | None = None, seed: int = 0) -> None:
        # the task to check against; None looks it up from each problem's `task` name
        self.task = task
        self._rng = np.random.default_rng(seed)

    def judge(
        self, problem: Problem | str, responses: Sequence[str], assistance: Assistance | None = None
    ) -> Judgement:
        task = task_for(problem, self.task)
        responses = check_responses(responses)
        scores, flaws = [], []
        for response in responses:
            analysis = task.analyse(problem, response)
            ok = analysis.ok
            scores.append(1.0 if analysis.correct else sum(ok) / (len(ok) + 1))
            wrong = tuple(i for i, good in enumerate(ok) if not good)
            flaws.append(FlawReport(not analysis.correct, wrong, tuple(range(len(ok)))))
        scores = np.asarray(scores, dtype=np.float64)
        return Judgement(scores, rank(scores, self._rng), tuple(flaws))
