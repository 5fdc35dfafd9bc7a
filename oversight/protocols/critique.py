"""Critique-assisted review: an overseer reads each response together with critiques of it (none, a model's, or
the gold critique) and reports which units it found wrong. The protocol of Saunders et al. (2022)'s assistance
experiment; comparing arms that differ only in the critiques shown measures what critiques are worth to that
overseer at its budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oversight.overseers import SimulatedHuman
from oversight.tasks.base import LabelledResponse, Task


@dataclass(frozen=True)
class ReviewOutcome:
    """Per response, what the overseer concluded. Arrays (R,)."""

    found: np.ndarray  # it named the unit of the injected flaw
    flagged: np.ndarray  # it judged the response flawed


def critique_review(
    overseer: SimulatedHuman, task: Task, items: list[LabelledResponse], critiques: list[list[str]]
) -> ReviewOutcome:
    """The overseer reviews every response of `items` shown its `critiques` (a list per response, in the
    order it reads them)."""
    found, flagged = [], []
    for item, shown in zip(items, critiques, strict=True):
        report = overseer.review(item.problem, item.response, shown, task)
        flagged.append(report.flawed)
        found.append(item.flaw is not None and item.flaw.location in report.locations)
    return ReviewOutcome(np.array(found), np.array(flagged))
