"""Scores of a protocol run: log score, Brier, ECE, result rows with intervals, Elo."""

import math

import numpy as np
import pytest

from oversight import protocols as P


def test_log_score_brier_and_ece_match_hand_computed_values():
    assert P.log_score([0.5, 1.0, 0.25]) == pytest.approx((-1 + 0 - 2) / 3)
    assert P.log_score([math.e**-1], base=math.e) == pytest.approx(-1.0)
    assert P.log_score([0.0]) == pytest.approx(math.log2(1e-12))  # clipped, finite
    assert P.brier_score([0.5, 1.0, 0.25]) == pytest.approx((0.25 + 0 + 0.5625) / 3)
    # Bin 0.9: accuracy 1/2 vs confidence 0.9; bin 0.6: accuracy 1 vs 0.6; each bin holds half the items.
    assert P.expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.4
    )
    assert P.expected_calibration_error([0.75, 0.75, 0.75, 0.75], [1, 1, 1, 0]) == pytest.approx(0.0)
    assert P.expected_calibration_error([1.0], [1]) == pytest.approx(0.0)  # confidence 1 falls in the top bin
    with pytest.raises(ValueError, match="differ in shape"):
        P.expected_calibration_error([0.5, 0.6], [1])


def test_protocol_rows_carry_intervals_and_splits():
    questions = [P.Question("s", ("x", "y"), correct=0, id=i) for i in range(20)]
    p = iter(np.linspace(0.05, 0.95, 40))
    outcomes = P.blind(questions, lambda views: [next(p) for _ in views])
    rows = {r["metric"]: r for r in P.protocol_rows("debate", outcomes, n_resamples=200, protocol="blind")}
    acc = rows["debate/accuracy"]
    assert acc["n"] == 40 and acc["protocol"] == "blind"
    assert acc["value"] == pytest.approx(np.mean([o.correct for o in outcomes]))
    for name in ("log_score", "brier", "ece", "accuracy_answer_order_ab", "accuracy_answer_order_ba"):
        r = rows[f"debate/{name}"]
        assert r["ci_low"] <= r["value"] <= r["ci_high"], name
    assert rows["debate/log_score"]["value"] == pytest.approx(P.log_score(outcomes))


def test_elo_recovers_a_synthetic_tournaments_strengths():
    truth = {"a": 1200.0, "b": 1400.0, "c": 1500.0, "d": 1750.0}
    rng = np.random.default_rng(0)
    matches = []
    for x in truth:
        for y in truth:
            if x < y:
                games = 400
                wins = rng.binomial(games, 1 / (1 + 10 ** ((truth[y] - truth[x]) / 400)))
                matches.append((x, y, wins / games, games))
    fitted = P.fit_elo(matches)
    assert sorted(fitted, key=fitted.get) == ["a", "b", "c", "d"]
    assert np.mean(list(fitted.values())) == pytest.approx(1500.0)
    for x in truth:
        for y in truth:
            assert fitted[x] - fitted[y] == pytest.approx(truth[x] - truth[y], abs=40)


def test_elo_stays_finite_when_a_player_wins_everything_and_rejects_bad_scores():
    fitted = P.fit_elo([("strong", "weak", 1.0, 50), ("weak", "mid", 0.5, 50)])
    assert all(np.isfinite(list(fitted.values())))
    assert fitted["strong"] > fitted["mid"] > fitted["weak"] - 1e-6
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        P.fit_elo([("a", "b", 1.5, 1)])
