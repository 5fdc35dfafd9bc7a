"""What every debate reports: accuracy rows with intervals, calibration (log score, ECE, Brier), evidence
statistics, and Elo ratings fitted from cross-play."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize

from oversight.protocols.debate import Outcome
from oversight.protocols.evidence import normalise
from oversight.stats import bootstrap_interval, proportion_row


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
