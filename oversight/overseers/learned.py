"""A learned judge: any model with a scalar head, seen only through a scoring function.

`score_fn(prompts: list[str], responses: list[str]) -> np.ndarray` returns one scalar per pair (a reward
model, a discriminator head, a critiqueability head...). Taking a plain callable keeps overseers independent
of the model code: a reward model's `score` method, a lambda over a jitted function, or a test stub all fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from oversight.overseers.base import (
    Assistance,
    FlawReport,
    Judgement,
    Overseer,
    check_responses,
    critiques_for,
    rank,
)
from oversight.tasks.base import Critique, Problem, Task, get_task

ScoreFn = Callable[[list[str], list[str]], np.ndarray]


class LearnedJudge(Overseer):
    """Scores responses with `score_fn`; higher is better.

    With `threshold`, a response scoring below it is reported flawed (a discriminator read as a classifier).
    With `show_critiques`, critiques in the assistance are appended to the response text after
    `critique_separator`, for judges trained to read them; otherwise assistance is ignored.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        threshold: float | None = None,
        show_critiques: bool = False,
        critique_separator: str = "\ncritique: ",
        seed: int = 0,
    ) -> None:
        if not callable(score_fn):
            raise TypeError(
                "score_fn must be callable: (prompts: list[str], responses: list[str]) -> np.ndarray"
            )
        # (prompts, responses) -> one scalar score per pair
        self.score_fn = score_fn
        # scores below it count as "flawed"; None: no flaw reports
        self.threshold = threshold
        # append critique text to each response before scoring
        self.show_critiques = show_critiques
        # text between a response and each critique appended to it
        self.critique_separator = critique_separator
        self._rng = np.random.default_rng(seed)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """`score_fn` with its output checked: a finite float64 vector, one score per (prompt, response)."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores = np.asarray(self.score_fn(prompts, responses), dtype=np.float64)
        if scores.size != len(responses):
            raise ValueError(f"score_fn returned {scores.size} scores for {len(responses)} responses")
        scores = scores.reshape(len(responses))
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"score_fn returned non-finite scores: {scores}")
        return scores

    def judge(
        self, problem: Problem | str, responses: Sequence[str], assistance: Assistance | None = None
    ) -> Judgement:
        prompt = problem.prompt if isinstance(problem, Problem) else problem
        if not isinstance(prompt, str):
            raise TypeError(f"expected a Problem or a prompt string, got {type(problem).__name__}")
        responses = check_responses(responses)
        if self.show_critiques:
            task = get_task(problem.task) if isinstance(problem, Problem) else None
            critiques = critiques_for(assistance, len(responses))
            responses = [
                r + "".join(self.critique_separator + _critique_text(c, task) for c in cs)
                for r, cs in zip(responses, critiques, strict=True)
            ]
        scores = self.score([prompt] * len(responses), responses)
        if self.threshold is None:
            flaws: tuple[FlawReport | None, ...] = (None,) * len(responses)
        else:
            flaws = tuple(FlawReport(bool(s < self.threshold)) for s in scores)
        return Judgement(scores, rank(scores, self._rng), flaws)


def _critique_text(critique: Critique | str, task: Task | None) -> str:
    if isinstance(critique, str):
        return critique
    if task is None:
        raise ValueError(
            "critique objects need the Problem (its task renders them); pass critique text instead"
        )
    return task.render_critique(critique)
