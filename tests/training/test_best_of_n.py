"""Best-of-N: deterministic selection against any scorer, and the analytic KL against Monte Carlo."""

import numpy as np
import pytest

from oversight.training.best_of_n import (
    best_of_n,
    best_of_n_indices,
    best_of_n_kl,
    best_of_n_kl_empirical,
    best_of_n_kl_exact,
    chance_best_of_n,
    most_frequent_indices,
)


def test_argmax_per_prompt_with_ties_to_the_lowest_index_and_nan_never_winning():
    scores = np.array([[0.1, 0.7, 0.7, 0.2], [np.nan, -1.0, -2.0, -1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    np.testing.assert_array_equal(best_of_n_indices(scores), [1, 1, 0])


def test_best_of_n_scores_every_sample_with_any_scorer():
    calls = []

    def score_fn(prompts, responses):  # a stand-in for a reward model or a gold checker
        calls.append(len(responses))
        return [len(r) + (0.5 if p == "b" else 0.0) for p, r in zip(prompts, responses, strict=True)]

    idx, scores, chosen = best_of_n(["a", "b"], [["x", "xyz", "xy"], ["pq", "p", "pqr"]], score_fn)
    assert calls == [6]  # one call for all B × N samples
    np.testing.assert_array_equal(idx, [1, 2])
    assert chosen == ["xyz", "pqr"]
    np.testing.assert_allclose(scores, [[1, 3, 2], [2.5, 1.5, 3.5]])
    with pytest.raises(ValueError, match="ragged"):
        best_of_n(["a", "b"], [["x", "y"], ["z"]], score_fn)


def test_analytic_kl_matches_monte_carlo_on_a_discrete_distribution():
    rng = np.random.default_rng(0)
    m, n, trials = 5000, 8, 40000
    probs = rng.dirichlet(np.ones(m))  # atoms listed in increasing score order, all scores distinct
    score_of_atom = np.arange(m, dtype=np.float32)
    # Monte Carlo: draw N samples per trial, keep the best by the selection rule, average log π_BoN / π.
    draws = rng.choice(m, size=(trials, n), p=probs)
    best = draws[np.arange(trials), np.asarray(best_of_n_indices(score_of_atom[draws]))]
    cdf = np.cumsum(probs)
    bon = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
    log_ratio = np.log(bon[best]) - np.log(probs[best])
    mc, stderr = log_ratio.mean(), log_ratio.std() / np.sqrt(trials)
    want = best_of_n_kl(n)
    assert want == pytest.approx(np.log(8) - 7 / 8)
    assert abs(mc - want) < 4 * stderr, (mc, want, stderr)
    # With many small atoms the exact KL is the continuous formula to within the discreteness.
    assert best_of_n_kl_exact(probs, n) == pytest.approx(want, abs=1e-2)


def test_analytic_kl_bounds_coarse_distributions_and_is_zero_for_one_sample():
    coarse = np.array([0.5, 0.3, 0.2])
    for n in (2, 4, 16):
        assert best_of_n_kl_exact(coarse, n) < best_of_n_kl(n)
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl_exact(coarse, 1) == pytest.approx(0.0)
    np.testing.assert_allclose(best_of_n_kl(np.array([1, 2, 4])), [0.0, np.log(2) - 0.5, np.log(4) - 0.75])


def test_chance_best_of_n_weights_distinct_samples_not_draws():
    samples = [["a", "a", "a", "b"], ["x", "y", "x", "y"], ["p", "q", "r", "s"]]
    gold = np.array([[1.0, 1.0, 1.0, 0.0], [0.2, 0.6, 0.2, 0.6], [1.0, 0.0, 0.0, 0.0]])
    # a chance scorer picks "a" or "b" with probability 1/2 each (the mean over draws is 0.75); distinct
    # samples everywhere give the mean over draws
    assert np.allclose(chance_best_of_n(samples, gold), [0.5, 0.4, 0.25])
    # the same by simulation: random scores per distinct sample, best-of-N by best_of_n_indices
    rng = np.random.default_rng(0)
    picked = []
    for _ in range(4000):
        per_sample = [{x: rng.random() for x in set(row)} for row in samples]
        scores = np.array([[d[x] for x in row] for d, row in zip(per_sample, samples, strict=True)])
        idx = np.asarray(best_of_n_indices(scores))
        picked.append(gold[np.arange(3), idx])
    assert np.allclose(np.mean(picked, 0), [0.5, 0.4, 0.25], atol=0.03)
    with pytest.raises(ValueError, match="do not match"):
        chance_best_of_n(samples, gold[:, :3])


def test_most_frequent_indices():
    picks = most_frequent_indices([["a", "a", "a", "b"], ["b", "a", "a", "b"], ["c", "b", "a", "a"]])
    assert picks.tolist() == [0, 0, 2]  # the middle one is a tie: it goes to the sample drawn first


def test_empirical_kl_pools_repeated_samples_in_score_order():
    # "a" twice (score 1), "c" (score 2), "b" (score 3): π = 0.5, 0.25, 0.25 in score order
    samples, scores = ["a", "b", "a", "c"], [1.0, 3.0, 1.0, 2.0]
    cdf = np.array([0.5, 0.75, 1.0])
    bon = cdf**2 - np.array([0.0, 0.5, 0.75]) ** 2  # 0.25, 0.3125, 0.4375
    want = float(np.sum(bon * np.log(bon / np.array([0.5, 0.25, 0.25]))))
    assert best_of_n_kl_empirical(samples, scores, 2) == pytest.approx(want)
    assert best_of_n_kl_empirical(samples, scores, 2) < best_of_n_kl(2)
    assert best_of_n_kl_empirical(["x"] * 8, [0.3] * 8, 4) == pytest.approx(0.0)  # always the same answer
