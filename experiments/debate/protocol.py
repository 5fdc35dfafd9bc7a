"""The debate protocol engine, shared by image and text debate, and the metrics every debate reports.

Why an engine: blind judge, assigned consultancy, debate and the oracle judge must run on the same questions
with the same judge, budgets and evidence rules, so that their accuracies compare. The engine fixes the rules
and leaves the players open:

- information asymmetry: agents see the `Question.source` (image, passage); the judge gets a `JudgeView`
  with the question, the two candidate answers and the transcript, and the source only in the oracle
  protocol;
- a verified-evidence channel: agents *request* evidence (a pixel index, a quote) and the channel checks it
  against the source (`PixelChannel` reads the pixel's true value; `QuoteChannel` marks a quote verified
  only if it occurs in the passage after normalisation);
- turn and length budgets (`Budget`), sequential or simultaneous turns (`Schedule`);
- the verdict is a probability on answer A; the verdict's answer is the likelier one, ties going to A, so
  running both answer orders (always on by default) makes a tie worth exactly one half.

Agents and judges are batched callables: an agent maps a list of `AgentView`s to a list of `Move`s, a judge
maps a list of `JudgeView`s to the probability of answer A for each. Anything the framework can load (a
search over a classifier, a transformer policy, a simulated overseer) plugs in; `per_example` adapts a
one-view-at-a-time function.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy.optimize import minimize

from oversight.stats import bootstrap_interval, proportion_row

PROTOCOLS = ("blind", "consultancy", "debate", "oracle")

# ----------------------------------------------------------------------------------------------------------
# Evidence
# ----------------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Text as quote verification compares it: Unicode-folded, lower-case, punctuation as spaces, one space.

    Curly and straight quotes, dashes and case differences between a quote and its passage are formatting,
    not content, so they must not make a verbatim quote fail (Khan et al. 2024 normalise the same way).
    """
    if not isinstance(text, str):
        raise TypeError(f"normalise expects a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).casefold()
    chars = (" " if unicodedata.category(c)[0] in "PS" else c for c in text)  # punctuation and symbols
    return " ".join("".join(chars).split())


def verify_quote(quote: str, passage: str) -> bool:
    """True when the quote occurs word-for-word in the passage after `normalise` (whole words only)."""
    q = normalise(quote)
    return bool(q) and f" {q} " in f" {normalise(passage)} "


@dataclass(frozen=True)
class Evidence:
    # "pixel" or "quote".
    kind: str
    # pixel: (index, value read from the source); quote: the text as the agent gave it.
    content: Any
    # Checked against the source. Judges should discount unverified evidence.
    verified: bool


class EvidenceChannel(Protocol):
    """Checks an agent's evidence request against the hidden source."""

    def check(self, source: Any, request: Any) -> Evidence: ...

    def cost(self, request: Any) -> int:
        """Characters the request uses from a turn's length budget."""
        ...


class QuoteChannel:
    """Quotes from a hidden passage, each marked verified or unverified (a paraphrase is unverified)."""

    def check(self, source: Any, request: Any) -> Evidence:
        if not isinstance(request, str):
            raise TypeError(f"a quote request must be a string, got {type(request).__name__}: {request!r}")
        if not isinstance(source, str):
            raise TypeError(f"QuoteChannel needs a passage (str) as the source, got {type(source).__name__}")
        return Evidence("quote", request, verify_quote(request, source))

    def cost(self, request: Any) -> int:
        return len(request)


class PixelChannel:
    """Pixel reveals: the agent names a pixel, the channel reads its true value, so every reveal is verified.

    With `nonzero_only` (Irving et al. 2018 revealed only nonzero pixels, the judge is trained on those) a
    request for a zero pixel is a rule violation and raises.
    """

    def __init__(self, nonzero_only: bool = True):
        self.nonzero_only = nonzero_only

    def check(self, source: Any, request: Any) -> Evidence:
        image = np.asarray(source).reshape(-1)  # (P,)
        if isinstance(request, bool) or not isinstance(request, int | np.integer):
            raise TypeError(f"a pixel request must be an integer index, got {type(request).__name__}")
        i = int(request)
        if not 0 <= i < image.size:
            raise ValueError(f"pixel request {i} is outside the image's {image.size} pixels")
        if self.nonzero_only and image[i] == 0:
            raise ValueError(
                f"pixel request {i} names a zero pixel; this channel reveals nonzero pixels only"
            )
        return Evidence("pixel", (i, float(image[i])), True)

    def cost(self, request: Any) -> int:
        return 0


# ----------------------------------------------------------------------------------------------------------
# Games, turns and views
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _as_p(outcomes_or_p) -> np.ndarray:
    if len(outcomes_or_p) and isinstance(outcomes_or_p[0], Outcome):
        return np.array([o.p_correct for o in outcomes_or_p], dtype=float)
    return np.asarray(outcomes_or_p, dtype=float)


def log_score(p_correct, base: float = 2.0, eps: float = 1e-12) -> float:
    """Mean log probability on the true answer (bits by default; 0 is perfect, -1 is a coin flip).

    The proper scoring rule Michael et al. 2023 pay judges with; `eps` keeps a confidently wrong verdict
    finite (log2 1e-12 ~ -40).
    """
    p = _as_p(p_correct)
    if p.size == 0:
        return float("nan")
    return float(np.mean(np.log(np.clip(p, eps, 1.0))) / math.log(base))


def brier_score(p_correct) -> float:
    """Mean squared error of the probability on the true answer (0 is perfect, 0.25 a coin flip)."""
    p = _as_p(p_correct)
    return float(np.mean((1.0 - p) ** 2)) if p.size else float("nan")


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE = sum over equal-width confidence bins of (bin share) * |bin accuracy - bin mean confidence|."""
    conf = np.asarray(confidence, dtype=float)  # (n,)
    hit = np.asarray(correct, dtype=float)  # (n,)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} differ in shape")
    if conf.size == 0:
        return float("nan")
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def verdict_calibration(outcomes: Sequence[Outcome], n_bins: int = 10) -> float:
    """ECE of the judge's verdicts: confidence = probability of the answer it chose."""
    p = _as_p(outcomes)
    conf = np.where([o.correct for o in outcomes], p, 1.0 - p)
    return expected_calibration_error(conf, [o.correct for o in outcomes], n_bins)


def both_orders_correct(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """(questions judged right under both answer orders, questions seen in both orders): Khan's accuracy_N."""
    by_key: dict[Any, list[bool]] = {}
    for o in outcomes:
        by_key.setdefault((o.question_id, o.assignment), []).append(o.correct)
    pairs = [v for v in by_key.values() if len(v) == 2]
    return sum(all(v) for v in pairs), len(pairs)


def evidence_stats(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Per-transcript means: turns, argument chars, evidence shown, verified, unverified, repeats, cut."""
    n = len(outcomes)
    if n == 0:
        return {}
    total = verified = repeated = dropped = chars = n_turns = truncated = 0
    for o in outcomes:
        seen = set()
        for t in o.transcript:
            n_turns += 1
            chars += len(t.argument)
            dropped += t.dropped_evidence
            truncated += t.truncated_chars
            for e in t.evidence:
                total += 1
                verified += e.verified
                key = (e.kind, normalise(e.content) if e.kind == "quote" else e.content)
                repeated += key in seen
                seen.add(key)
    return {
        "turns": n_turns / n,
        "argument_chars": chars / n,
        "evidence": total / n,
        "verified": verified / n,
        "unverified": (total - verified) / n,
        "verified_fraction": verified / total if total else float("nan"),
        "repeated": repeated / n,
        "dropped": dropped / n,
        "truncated_chars": truncated / n,
    }


def protocol_rows(
    metric_prefix: str, outcomes: Sequence[Outcome], *, n_resamples: int = 1000, seed: int = 0, **extra
) -> list[dict]:
    """Results rows of one protocol run: accuracy (both orders counted, and per order), accuracy under both
    orders, log score, ECE and Brier with bootstrap intervals, consultancy's honest/dishonest split."""
    rows = [
        proportion_row(f"{metric_prefix}/accuracy", sum(o.correct for o in outcomes), len(outcomes), **extra)
    ]
    k, m = both_orders_correct(outcomes)
    if m:
        rows.append(proportion_row(f"{metric_prefix}/accuracy_both_orders", k, m, **extra))
    for name, sel in (("answer_order_ab", lambda o: not o.swapped), ("answer_order_ba", lambda o: o.swapped)):
        part = [o for o in outcomes if sel(o)]
        if part and len(part) < len(outcomes):
            rows.append(
                proportion_row(
                    f"{metric_prefix}/accuracy_{name}", sum(o.correct for o in part), len(part), **extra
                )
            )
    for kind in ("honest", "dishonest"):
        part = [o for o in outcomes if o.assignment == kind]
        if part:
            rows.append(
                proportion_row(
                    f"{metric_prefix}/accuracy_{kind}", sum(o.correct for o in part), len(part), **extra
                )
            )
    for name, first in (("honest_first", True), ("liar_first", False)):
        part = [o for o in outcomes if o.honest_first is first]
        if part:
            rows.append(
                proportion_row(
                    f"{metric_prefix}/accuracy_{name}", sum(o.correct for o in part), len(part), **extra
                )
            )
    p = _as_p(outcomes)
    hit = np.array([o.correct for o in outcomes], dtype=float)
    conf = np.where(hit > 0, p, 1.0 - p)
    data = np.stack([p, conf, hit], axis=1)  # (n, 3)
    for name, stat in (
        ("log_score", lambda d: log_score(d[:, 0])),
        ("brier", lambda d: brier_score(d[:, 0])),
        ("ece", lambda d: expected_calibration_error(d[:, 1], d[:, 2])),
    ):
        lo, hi = bootstrap_interval(data, stat, n_resamples=n_resamples, seed=seed)
        rows.append({"metric": f"{metric_prefix}/{name}", "value": stat(data), "ci_low": lo, "ci_high": hi,
                     "n": len(outcomes), **extra})  # fmt: skip
    return rows


def fit_elo(
    matches: Iterable[tuple[Any, Any, float, float]],
    *,
    base: float = 1500.0,
    scale: float = 400.0,
    l2: float = 1e-3,
) -> dict[Any, float]:
    """Elo ratings by maximum likelihood under Bradley-Terry: P(a beats b) = 1 / (1 + 10^((r_b - r_a)/scale)).

    `matches` are (player_a, player_b, score of a in [0, 1], games) — a score can be a win rate over many
    games. A small ridge `l2` (per rating, in units of scale/ln 10) keeps ratings finite when a player won
    every game; ratings are centred on `base`. Maximum likelihood instead of sequential Elo updates, so the
    result does not depend on game order (Khan et al. fit theirs by least squares on win rates).
    """
    matches = list(matches)
    players = sorted({m[0] for m in matches} | {m[1] for m in matches}, key=repr)
    if not players:
        raise ValueError("fit_elo needs at least one match")
    index = {p: i for i, p in enumerate(players)}
    a = np.array([index[m[0]] for m in matches])
    b = np.array([index[m[1]] for m in matches])
    s = np.array([float(m[2]) for m in matches])  # (M,)
    w = np.array([float(m[3]) for m in matches])  # (M,)
    if np.any((s < 0) | (s > 1)):
        raise ValueError(f"fit_elo: match scores must lie in [0, 1], got {s[(s < 0) | (s > 1)]}")
    if np.any(w <= 0):
        raise ValueError("fit_elo: every match needs a positive number of games")

    def loss(theta):  # theta: ratings in natural-log-odds units, (P,)
        d = theta[a] - theta[b]
        log_p = -np.logaddexp(0.0, -d)
        log_q = -np.logaddexp(0.0, d)
        nll = -np.sum(w * (s * log_p + (1 - s) * log_q)) + l2 * np.sum(theta**2)
        sig = 1.0 / (1.0 + np.exp(-d))
        g_d = -w * (s - sig)
        grad = np.bincount(a, g_d, len(players)) - np.bincount(b, g_d, len(players)) + 2 * l2 * theta
        return nll, grad

    res = minimize(loss, np.zeros(len(players)), jac=True, method="L-BFGS-B")
    theta = res.x - res.x.mean()
    return {p: float(base + theta[i] * scale / math.log(10)) for p, i in index.items()}


def elo_win_probability(r_a: float, r_b: float, scale: float = 400.0) -> float:
    """Probability that a player rated r_a beats one rated r_b."""
    return 1.0 / (1.0 + 10 ** ((r_b - r_a) / scale))
