"""The debate game engine and the protocols played on it: blind judge, consultancy, debate, oracle.

Why an engine: blind judge, assigned consultancy, debate and the oracle judge must run on the same questions
with the same judge, budgets and evidence rules, so that their accuracies compare. The engine fixes the rules
and leaves the players open:

- information asymmetry: agents see the `Question.source` (image, passage); the judge gets a `JudgeView`
  with the question, the two candidate answers and the transcript, and the source only in the oracle
  protocol;
- a verified-evidence channel (`oversight.protocols.evidence`) checks each evidence request of an agent
  against the source;
- turn and length budgets (`Budget`), sequential or simultaneous turns (`Schedule`);
- the verdict is a probability on answer A; the verdict's answer is the likelier one, ties going to A, so
  running both answer orders (always on by default) makes a tie worth exactly one half.

Agents and judges are batched callables: an agent maps a list of `AgentView`s to a list of `Move`s, a judge
maps a list of `JudgeView`s to the probability of answer A for each. Anything the framework can load (a
search over a classifier, a transformer policy, a simulated overseer) plugs in; `per_example` adapts a
one-view-at-a-time function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from oversight.protocols.evidence import Evidence, EvidenceChannel


@dataclass(frozen=True)
class Question:
    # Hidden from the judge (except in the oracle protocol): an image, a passage.
    source: Any
    # The two candidate answers, in the order the judge sees them (A, B).
    answers: tuple
    # Index of the true answer in `answers`.
    correct: int
    # What the judge is told besides the answers (a question text; None for "which label?").
    question: Any = None
    id: Any = 0

    def __post_init__(self):
        if len(self.answers) != 2:
            raise ValueError(
                f"question {self.id!r}: the engine judges between 2 answers, got {len(self.answers)}"
            )
        if self.correct not in (0, 1):
            raise ValueError(f"question {self.id!r}: correct must be 0 or 1, got {self.correct!r}")

    def swapped(self) -> Question:
        """The same question with the answers in the other order (position debiasing)."""
        return replace(self, answers=self.answers[::-1], correct=1 - self.correct)


@dataclass(frozen=True)
class Move:
    # Free text (empty for pixel games).
    argument: str = ""
    # Evidence requests for the channel: pixel indices or quote strings.
    evidence: tuple = ()


@dataclass(frozen=True)
class Turn:
    # Speaking seat: 0 argues for answer A in a debate; a consultant sits in seat 0.
    seat: int
    # Index of the answer the speaker argues for.
    answer: int
    argument: str
    evidence: tuple[Evidence, ...]
    # Evidence requests cut by the budget and characters cut from the argument (never shown to the judge).
    dropped_evidence: int = 0
    truncated_chars: int = 0


@dataclass(frozen=True)
class AgentView:
    """What an agent sees when it moves: the source too (agents are the experts)."""

    question: Any
    answers: tuple
    # The answer this agent argues for.
    answer: int
    source: Any
    # Turns already visible: in simultaneous turns, not the other seat's move of the same round.
    turns: tuple[Turn, ...]
    # Answers argued for by the moves still to come after this one, in order (for look-ahead search).
    upcoming: tuple[int, ...]


@dataclass(frozen=True)
class JudgeView:
    """What the judge sees: never the source, except in the oracle protocol."""

    question: Any
    answers: tuple
    turns: tuple[Turn, ...]
    source: Any = None


Agent = Callable[[list[AgentView]], list[Move]]
Judge = Callable[[list[JudgeView]], Sequence[float]]  # probability that answer A (index 0) is correct


def per_example(fn: Callable[[AgentView], Move]) -> Agent:
    """A batched agent from a one-view function (for agents that are not vectorised)."""

    def agent(views: list[AgentView]) -> list[Move]:
        return [fn(v) for v in views]

    agent.__name__ = getattr(fn, "__name__", "agent")
    return agent


@dataclass(frozen=True)
class Budget:
    # Evidence items per turn (None: no limit).
    max_evidence: int | None = None
    # Characters per turn, quotes included (Michael et al. 2023: 750).
    max_chars: int | None = None
    # Characters of quoted evidence per turn (Michael et al. 2023: 250).
    max_quote_chars: int | None = None


@dataclass(frozen=True)
class Schedule:
    """Who moves when: `moves` moves in all, alternating seats (sequential) or in rounds on one snapshot."""

    moves: int
    simultaneous: bool = False

    def steps(self, seats: int) -> list[tuple[int, ...]]:
        """Seats moving at each step; the seats of one step all see the transcript as it was before it."""
        if self.moves < 0:
            raise ValueError(f"Schedule.moves must be >= 0, got {self.moves}")
        if self.simultaneous:
            if self.moves % seats:
                raise ValueError(f"simultaneous schedule: {self.moves} moves do not split into {seats} seats")
            return [tuple(range(seats))] * (self.moves // seats)
        return [(t % seats,) for t in range(self.moves)]


def _take_turn(seat: int, answer: int, move: Move, source: Any, channel, budget: Budget) -> Turn:
    """Applies the budgets, then checks each kept evidence request against the source."""
    if not isinstance(move, Move):
        raise TypeError(f"an agent returned {type(move).__name__}, expected Move")
    requests = list(move.evidence)
    dropped = 0
    if budget.max_evidence is not None and len(requests) > budget.max_evidence:
        dropped += len(requests) - budget.max_evidence
        requests = requests[: budget.max_evidence]
    if budget.max_quote_chars is not None:
        kept, used = [], 0
        for r in requests:
            c = channel.cost(r)
            if used + c > budget.max_quote_chars:
                dropped += 1
                continue
            kept.append(r)
            used += c
        requests = kept
    if requests and channel is None:
        raise ValueError("an agent requested evidence but the protocol has no evidence channel")
    evidence = tuple(channel.check(source, r) for r in requests)
    argument, cut = move.argument, 0
    if budget.max_chars is not None:
        room = max(0, budget.max_chars - sum(channel.cost(r) for r in requests))
        cut = max(0, len(argument) - room)
        argument = argument[:room]
    return Turn(seat, answer, argument, evidence, dropped, cut)


@dataclass(frozen=True)
class Outcome:
    question_id: Any
    protocol: str
    # The answers were shown in the reversed order.
    swapped: bool
    # Judge probability on the true answer.
    p_correct: float
    # The judge's verdict (likelier answer, ties to A) is the true answer.
    correct: bool
    transcript: tuple[Turn, ...]
    # Consultancy: "honest" or "dishonest"; debate: "debate"; otherwise None.
    assignment: str | None = None
    # Debate: the honest debater spoke first (sat in seat 0).
    honest_first: bool | None = None


def _orders(questions: Iterable[Question], both_orders: bool) -> list[tuple[Question, bool]]:
    out = []
    for q in questions:
        out.append((q, False))
        if both_orders:
            out.append((q.swapped(), True))
    return out


def _play(
    protocol: str,
    games: list[tuple[Question, bool]],
    seats: list[tuple[tuple[Agent, int], ...]],
    judge: Judge,
    channel,
    schedule: Schedule | None,
    budget: Budget,
    show_source: bool = False,
    assignments: list[str | None] | None = None,
) -> list[Outcome]:
    """Plays every game turn by turn, calling each agent once per step on all games where it moves."""
    n = len(games)
    turns: list[list[Turn]] = [[] for _ in range(n)]
    n_seats = len(seats[0]) if seats else 0
    steps = schedule.steps(n_seats) if (schedule is not None and n_seats) else []
    for t, step in enumerate(steps):
        snapshot = [tuple(ts) for ts in turns]
        later_steps = [s for later in steps[t + 1 :] for s in later]
        new: list[list[Turn]] = [[] for _ in range(n)]
        for pos, seat in enumerate(step):
            upcoming_seats = (*step[pos + 1 :], *later_steps)
            groups: dict[int, tuple[Agent, list[int]]] = {}
            for g in range(n):
                agent = seats[g][seat][0]
                groups.setdefault(id(agent), (agent, []))[1].append(g)
            for agent, idx in groups.values():
                views = []
                for g in idx:
                    q = games[g][0]
                    views.append(
                        AgentView(
                            q.question, q.answers, seats[g][seat][1], q.source, snapshot[g],
                            tuple(seats[g][s][1] for s in upcoming_seats),
                        )
                    )  # fmt: skip
                moves = list(agent(views))
                if len(moves) != len(views):
                    raise ValueError(f"agent {agent!r} returned {len(moves)} moves for {len(views)} views")
                for g, move in zip(idx, moves, strict=True):
                    q = games[g][0]
                    new[g].append(_take_turn(seat, seats[g][seat][1], move, q.source, channel, budget))
        for g in range(n):
            turns[g].extend(new[g])
    views = [
        JudgeView(q.question, q.answers, tuple(turns[g]), q.source if show_source else None)
        for g, (q, _) in enumerate(games)
    ]
    p_a = np.asarray(judge(views), dtype=float).reshape(-1) if n else np.zeros(0)  # (n,)
    if p_a.shape != (n,):
        raise ValueError(f"{protocol}: the judge returned {p_a.size} probabilities for {n} games")
    if not np.all((p_a >= 0) & (p_a <= 1)):
        raise ValueError(
            f"{protocol}: the judge returned probabilities outside [0, 1]: {p_a[(p_a < 0) | (p_a > 1)]}"
        )
    outcomes = []
    for g, (q, swapped) in enumerate(games):
        p_correct = p_a[g] if q.correct == 0 else 1.0 - p_a[g]
        verdict = 0 if p_a[g] >= 0.5 else 1
        honest_first = None
        if protocol == "debate":
            honest_first = seats[g][0][1] == q.correct
        outcomes.append(
            Outcome(
                q.id, protocol, swapped, float(p_correct), verdict == q.correct, tuple(turns[g]),
                assignments[g] if assignments else None, honest_first,
            )
        )  # fmt: skip
    return outcomes


def blind(questions: Iterable[Question], judge: Judge, *, both_orders: bool = True) -> list[Outcome]:
    """The judge alone: question and answers, no evidence (the naive baseline)."""
    return _play("blind", _orders(questions, both_orders), [], judge, None, None, Budget())


def oracle(questions: Iterable[Question], judge: Judge, *, both_orders: bool = True) -> list[Outcome]:
    """The judge sees the source itself: the upper bound of what evidence can give it."""
    return _play("oracle", _orders(questions, both_orders), [], judge, None, None, Budget(), show_source=True)


def consultancy(
    questions: Iterable[Question],
    consultant: Agent,
    judge: Judge,
    channel: EvidenceChannel | None,
    schedule: Schedule,
    budget: Budget = Budget(),
    *,
    both_orders: bool = True,
    assignment: str = "both",
    rng: np.random.Generator | None = None,
) -> list[Outcome]:
    """One agent argues for an assigned answer, the true one or not with probability 1/2.

    `assignment="both"` plays every question once with each assignment (the expectation of the coin flip,
    with less variance); `"random"` flips the coin per question and order, with `rng`.
    """
    if assignment not in ("both", "random"):
        raise ValueError(f"consultancy assignment must be 'both' or 'random', got {assignment!r}")
    if assignment == "random" and rng is None:
        raise ValueError("consultancy assignment='random' needs an rng")
    games, seats, labels = [], [], []
    for q, swapped in _orders(questions, both_orders):
        kinds = (
            ("honest", "dishonest") if assignment == "both" else (("honest", "dishonest")[rng.integers(2)],)
        )
        for kind in kinds:
            games.append((q, swapped))
            seats.append(((consultant, q.correct if kind == "honest" else 1 - q.correct),))
            labels.append(kind)
    return _play("consultancy", games, seats, judge, channel, schedule, budget, assignments=labels)


def debate(
    questions: Iterable[Question],
    honest: Agent,
    liar: Agent,
    judge: Judge,
    channel: EvidenceChannel | None,
    schedule: Schedule,
    budget: Budget = Budget(),
    *,
    both_orders: bool = True,
) -> list[Outcome]:
    """Honest agent (true answer) against liar (the other answer); the advocate of answer A sits in seat 0.

    With both orders the honest agent speaks first in one game and second in the other.
    """
    games = _orders(questions, both_orders)
    seats = []
    for q, _ in games:
        by_answer = {q.correct: honest, 1 - q.correct: liar}
        seats.append(((by_answer[0], 0), (by_answer[1], 1)))
    return _play(
        "debate", games, seats, judge, channel, schedule, budget, assignments=["debate"] * len(games)
    )
