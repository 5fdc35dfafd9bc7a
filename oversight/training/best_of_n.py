"""Best-of-N sampling against any scorer, and its KL from the sampling policy (for over-optimisation curves).

Gao, Schulman & Hilton (2022) plot gold and proxy reward of best-of-N against KL(π_BoN || π) =
log N - (N - 1) / N, exact when no two samples can score the same (a continuous score distribution) and an
upper bound otherwise (Beirami et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def best_of_n_indices(scores: jax.Array) -> jax.Array:
    """Index of the best of N samples per prompt, scores (B, N) -> (B,) int32.

    Ties go to the lowest index (deterministic); a NaN score never wins unless every score of the row is NaN.
    """
    scores = jnp.asarray(scores)
    scores = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)  # argmax returns the first maximum


def best_of_n(
    prompts: Sequence[Any],
    samples: Sequence[Sequence[Any]],
    score_fn: Callable[[list[Any], list[Any]], Any],
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Pick the best of each prompt's N samples by `score_fn(prompts, responses) -> (n,) scores`.

    `score_fn` is any scorer over flat lists (a reward model, a discriminator head, a gold checker, a
    `LearnedJudge.score`); every (prompt, sample) pair is scored in one call. Returns (indices (B,),
    scores (B, N) float32, the chosen samples).
    """
    n = len(samples[0]) if samples else 0
    if len(prompts) != len(samples) or any(len(s) != n for s in samples):
        raise ValueError(f"best_of_n: need N samples for each of {len(prompts)} prompts, got ragged samples")
    if n == 0:
        raise ValueError("best_of_n: no samples to choose from")
    flat_prompts = [p for p, s in zip(prompts, samples, strict=True) for _ in s]
    flat_samples = [x for s in samples for x in s]
    scores = np.asarray(score_fn(flat_prompts, flat_samples), np.float32)
    if scores.size != len(flat_samples):
        raise ValueError(f"best_of_n: score_fn returned {scores.size} scores for {len(flat_samples)} samples")
    scores = scores.reshape(len(samples), n)
    idx = np.asarray(best_of_n_indices(scores))
    return idx, scores, [s[i] for s, i in zip(samples, idx, strict=True)]


def chance_best_of_n(samples: Sequence[Sequence[Hashable]], values: np.ndarray) -> np.ndarray:
    """What best-of-N reaches with a scorer at chance: per prompt, the mean of `values` (B, N) over the
    prompt's *distinct* samples (B,).

    Any scorer gives identical samples one score, so a scorer that knows nothing picks each distinct sample
    equally often, not each draw. When the policy repeats its good samples more often than its bad ones, this
    is below the mean over draws, so the mean over draws is the wrong null for a best-of-N selection."""
    values = np.asarray(values, np.float64)
    if values.shape != (len(samples), len(samples[0]) if samples else 0):
        raise ValueError(
            f"chance_best_of_n: values {values.shape} do not match {len(samples)} prompts' samples"
        )
    out = np.empty(len(samples))
    for i, row in enumerate(samples):
        first = {x: j for j, x in reversed(list(enumerate(row)))}  # sample -> index of its first draw
        out[i] = values[i, list(first.values())].mean()
    return out


def most_frequent_indices(samples: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """Per prompt, the index of the first draw of its most frequent sample (B,) (ties: the sample drawn
    first): best-of-N by majority vote, the baseline that needs no scorer."""
    picks = []
    for row in samples:
        counts = {x: list(row).count(x) for x in row}
        picks.append(max(range(len(row)), key=lambda j: (counts[row[j]], -j)))
    return np.asarray(picks, np.int64)


def best_of_n_kl(n: int | np.ndarray) -> float | np.ndarray:
    """KL(π_BoN || π) = log N - (N - 1) / N in nats, for distinct scores."""
    n_arr = np.asarray(n, np.float64)
    if np.any(n_arr < 1):
        raise ValueError(f"best_of_n_kl: N must be >= 1, got {n}")
    kl = np.log(n_arr) - (n_arr - 1.0) / n_arr
    return float(kl) if np.ndim(kl) == 0 else kl


def best_of_n_kl_exact(probs: np.ndarray, n: int) -> float:
    """Exact KL(π_BoN || π) of a discrete distribution `probs` listed in increasing score order, scores distinct.

    π_BoN(x_k) = F(x_k)^N - F(x_{k-1})^N with F the CDF in score order. Never exceeds `best_of_n_kl(n)`.
    """
    p = np.asarray(probs, np.float64)
    cdf = np.cumsum(p)
    cdf = cdf / cdf[-1]
    bon = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
    real = bon > 0
    return float(np.sum(bon[real] * (np.log(bon[real]) - np.log(p[real]))))


def best_of_n_kl_empirical(samples: Sequence[Hashable], scores: Sequence[float], n: int) -> float:
    """KL(π_BoN || π) with π the empirical distribution of one prompt's samples: identical samples pooled
    into one atom, atoms in score order (`best_of_n_kl_exact`). A policy that often writes the same answer
    moves less by keeping the best of N than `best_of_n_kl(n)`, the bound for distinct samples, says; with
    M samples all distinct it is the KL of the best of N among M atoms (below the bound as N nears M)."""
    atoms: dict[Hashable, list] = {}
    for sample, score in zip(samples, scores, strict=True):
        atoms.setdefault(sample, [0, float(score)])[0] += 1
    counts = np.asarray([c for c, _ in sorted(atoms.values(), key=lambda a: a[1])], np.float64)
    return best_of_n_kl_exact(counts / counts.sum(), n)
