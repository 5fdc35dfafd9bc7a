"""Oversight protocols: the rules of the game a judge plays with agents, and what every game reports.

    from oversight import protocols as P
    outcomes = P.debate(questions, honest, liar, judge, P.QuoteChannel(), P.Schedule(2), P.Budget(max_evidence=1))
    rows = P.protocol_rows("debate", outcomes)

- `debate`: the game engine (questions with a hidden source and two candidate answers, moves, turns, views,
  budgets, schedules) and the protocols played on it: `blind` judge, assigned `consultancy`, `debate`,
  `oracle` judge, each in both answer orders by default;
- `evidence`: channels that check an agent's evidence request against the source (`PixelChannel`,
  `QuoteChannel`, `verify_quote`);
- `critique`: critique-assisted review, an overseer reading responses with critiques of them;
- `scoring`: accuracy rows with intervals, calibration (log score, ECE, Brier), evidence statistics, Elo.

The engine knows no models: agents and judges are batched callables, so a new experiment composes these
protocols with its own debaters and judges, on questions from a task (`oversight.tasks.digits`,
`oversight.tasks.passages`).
"""

from oversight.protocols.critique import ReviewOutcome, critique_review
from oversight.protocols.debate import (
    Agent,
    AgentView,
    Budget,
    Judge,
    JudgeView,
    Move,
    Outcome,
    Question,
    Schedule,
    Turn,
    blind,
    consultancy,
    debate,
    oracle,
    per_example,
)
from oversight.protocols.evidence import (
    Evidence,
    EvidenceChannel,
    PixelChannel,
    QuoteChannel,
    normalise,
    verify_quote,
)
from oversight.protocols.scoring import (
    both_orders_correct,
    brier_score,
    evidence_stats,
    expected_calibration_error,
    fit_elo,
    log_score,
    protocol_rows,
)

__all__ = [
    "ReviewOutcome",
    "critique_review",
    "Agent",
    "AgentView",
    "Budget",
    "Evidence",
    "EvidenceChannel",
    "Judge",
    "JudgeView",
    "Move",
    "Outcome",
    "PixelChannel",
    "Question",
    "QuoteChannel",
    "Schedule",
    "Turn",
    "blind",
    "both_orders_correct",
    "brier_score",
    "consultancy",
    "debate",
    "evidence_stats",
    "expected_calibration_error",
    "fit_elo",
    "log_score",
    "normalise",
    "oracle",
    "per_example",
    "protocol_rows",
    "verify_quote",
]
