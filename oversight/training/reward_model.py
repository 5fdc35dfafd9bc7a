"""Reward model: Bradley–Terry loss over K-way rankings, held-out metrics, and reward normalisation.

InstructGPT trains on all C(K, 2) comparisons of one prompt as a single batch element: each of the K responses
gets one forward pass, its scalar is read at its last real token, and the prompt's pairs share those K rewards.
Weighting each prompt as one element (not each pair) keeps a response from being counted K - 1 times, which
the paper found overfits.

Shapes: B prompts, K responses per prompt (best first), T tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from oversight.models.transformer import Transformer, positions_from_mask
from oversight.training.sft import next_token_logprobs


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row, right- or left-padded (T - 1 for an empty row). (B,)"""
    t = mask.shape[-1]
    # argmax returns the first maximum: on the reversed mask, the last real position.
    return (t - 1 - jnp.argmax(mask[..., ::-1].astype(bool), axis=-1)).astype(jnp.int32)


def at_last_token(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x (B, T) read at each row's last real token. (B,)"""
    return jnp.take_along_axis(x, last_token_index(mask)[:, None], axis=-1)[:, 0]


def reward_scores(
    model: Transformer,
    tokens: jax.Array,
    mask: jax.Array,
    head: str = "reward",
    scored_tokens: jax.Array | None = None,
    lm_scale: jax.Array | float = 1.0,
) -> jax.Array:
    """The scalar head at the last real token of each (prompt + response) row, float32 (B,).

    Rows may be right-padded (`pack_rankings`) or left-padded (a sampler's prompt followed by its response);
    position ids come from the mask either way. With `scored_tokens` (B, T), 1 on the response's tokens, the
    score adds the model's own log-likelihood of those tokens given everything before them: a generative
    reward model. Started from the SFT policy, it already finds the responses that policy rarely writes
    unlikely before any comparison is seen, and the ranking loss trains the head and that likelihood together.
    `lm_scale` multiplies that log-likelihood: a normalisation's gain, which `fold_normalization` puts into the
    head's weights but cannot put into the likelihood (see `RewardParams`).
    """
    hidden, _ = model(tokens, positions_from_mask(mask), mask)  # (B, T, D)
    score = at_last_token(model.scalar(hidden, head), mask)  # (B,)
    if scored_tokens is not None:
        logp = next_token_logprobs(model, hidden, tokens)  # (B, T-1): token t+1 given tokens 0..t
        score = score + lm_scale * (logp * scored_tokens[:, 1:]).sum(-1)
    return score


def pair_mask(valid: jax.Array, ranks: jax.Array | None = None) -> jax.Array:
    """(B, K, K) bool: pair (i, j) is a comparison "i better than j" of one prompt.

    Responses are ordered best first, so the comparisons are i < j with both responses real. With `ranks`
    (B, K) (0 = best, non-decreasing along K), pairs of equal rank are ties and carry no preference: dropped.
    """
    k = valid.shape[-1]
    valid = valid.astype(bool)
    upper = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]  # (K, K)
    pairs = upper[None] & valid[:, :, None] & valid[:, None, :]  # (B, K, K)
    if ranks is not None:
        pairs = pairs & (ranks[:, :, None] < ranks[:, None, :])
    return pairs


def ranking_loss(
    rewards: jax.Array,
    valid: jax.Array,
    ranks: jax.Array | None = None,
    margin: float | jax.Array = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley–Terry loss over K-way rankings, each prompt's pairs weighted as one batch element.

    rewards (B, K) float, responses ordered best first; valid (B, K) marks real responses (a ranking of fewer
    than K responses fills the tail with invalid ones); ranks (B, K) optional tie groups (see `pair_mask`);
    margin broadcastable to (B, K, K), the required gap for pair (i better, j worse), as in Llama 2.

    loss = mean over prompts with at least one pair of [ mean over its pairs of -log σ(r_i - r_j - margin) ].
    """
    rewards = rewards.astype(jnp.float32)
    pairs = pair_mask(valid, ranks)  # (B, K, K)
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K) r_better - r_worse for i < j
    pair_loss = -jax.nn.log_sigmoid(diff - margin)  # (B, K, K)
    weight = pairs.astype(jnp.float32)
    n_pairs = weight.sum(axis=(1, 2))  # (B,)
    per_prompt = (pair_loss * weight).sum(axis=(1, 2)) / jnp.maximum(n_pairs, 1.0)  # (B,)
    has_pairs = (n_pairs > 0).astype(jnp.float32)
    loss = (per_prompt * has_pairs).sum() / jnp.maximum(has_pairs.sum(), 1.0)
    correct = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
    aux = {
        "accuracy": (correct * weight).sum() / jnp.maximum(weight.sum(), 1.0),
        "pairs": weight.sum(),
        "reward_mean": (rewards * valid).sum() / jnp.maximum(valid.sum(), 1),
    }
    return loss, aux


def reward_model_loss(
    model: Transformer, batch: dict[str, jax.Array], head: str = "reward"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_fn(model, batch)` for the shared train step; one forward pass per response, not per pair.

    batch: tokens (B, K, T), mask (B, K, T), valid (B, K), optional ranks (B, K), margin (B, K, K) and
    scored_tokens (B, K, T) (a generative reward model, see `reward_scores`), as `pack_rankings` makes them.
    """
    rewards = ranking_rewards(model, batch, head)  # (B, K)
    return ranking_loss(rewards, batch["valid"], batch.get("ranks"), batch.get("margin", 0.0))


def ranking_rewards(model: Transformer, batch: dict[str, jax.Array], head: str = "reward") -> jax.Array:
    """The reward of every response of packed rankings (`pack_rankings`), one forward pass per response:
    tokens (B, K, T) -> (B, K) float32."""
    b, k, t = batch["tokens"].shape
    scored = batch.get("scored_tokens")
    flat = reward_scores(
        model,
        batch["tokens"].reshape(b * k, t),
        batch["mask"].reshape(b * k, t),
        head,
        None if scored is None else scored.reshape(b * k, t),
    )
    return flat.reshape(b, k)


def unit_scores(
    model: Transformer,
    views: jax.Array,
    mask: jax.Array,
    head: str = "reward",
    unit_tokens: jax.Array | None = None,
) -> jax.Array:
    """A process reward model's logit that each unit is right, read from its local view. views and mask
    (..., U, W): per response, U views of W tokens (`Task.unit_views`, right-padded). Returns (..., U).

    With `unit_tokens` (..., U, W), 1 on the unit's own tokens in its view, the logit adds the model's
    log-likelihood of those tokens given the view before them: a generative verifier, so a reward model
    started from a policy fine-tuned to write right units already finds wrong ones unlikely, and the
    ranking loss trains both the head and that likelihood.
    """
    lead, w = views.shape[:-1], views.shape[-1]
    scored = None if unit_tokens is None else unit_tokens.reshape(-1, w)
    # Each view is one row of a generative reward model whose scored tokens are the unit's own.
    logits = reward_scores(model, views.reshape(-1, w), mask.reshape(-1, w), head, scored)  # (R,)
    return logits.reshape(lead)


def process_reward(unit_logits: jax.Array, unit_mask: jax.Array) -> jax.Array:
    """A response's reward from its units' logits: log P(every unit is right) = Σ_u log σ(s_u) over real
    units. unit_logits, unit_mask (..., U); returns (...,). One wrong unit is enough to sink a response,
    which is what lets comparisons of whole responses teach a step-level scorer."""
    return (jax.nn.log_sigmoid(unit_logits.astype(jnp.float32)) * unit_mask).sum(-1)


def process_reward_model_loss(
    model: Transformer, batch: dict[str, jax.Array], head: str = "reward"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley–Terry loss over K-way rankings of whole responses for a reward model that scores units.

    batch: views and view_mask (B, K, U, W), unit_mask (B, K, U), valid (B, K), optional ranks (B, K) and
    unit_tokens (B, K, U, W) (see `unit_scores`); responses ordered best first as in `reward_model_loss`. Padding units must still hold one real token
    (their view mask is not all zero) so their (ignored) scores stay finite.
    """
    logits = unit_scores(
        model, batch["views"], batch["view_mask"], head, batch.get("unit_tokens")
    )  # (B, K, U)
    rewards = process_reward(logits, batch["unit_mask"])  # (B, K)
    return ranking_loss(rewards, batch["valid"], batch.get("ranks"))


def pairwise_accuracy(rewards: jax.Array, valid: jax.Array, ranks: jax.Array | None = None) -> jax.Array:
    """Fraction of held-out comparisons the rewards order correctly (a tie in reward counts one half).

    Every comparison counts once (not per-prompt weighted): this is accuracy on comparisons, as papers report.
    """
    return ranking_loss(rewards, valid, ranks)[1]["accuracy"]


def expected_calibration_error(
    rewards: jax.Array, valid: jax.Array, ranks: jax.Array | None = None, n_bins: int = 10
) -> jax.Array:
    """ECE of the Bradley–Terry probabilities σ(r_i - r_j) on held-out comparisons.

    Each comparison is a prediction "the response with the higher reward is preferred" with confidence
    σ(|r_i - r_j|) ∈ [0.5, 1]; confidences are binned into `n_bins` equal bins over [0.5, 1] and
    ECE = Σ_bins (n_bin / n) |accuracy_bin - mean confidence_bin|.
    """
    rewards = rewards.astype(jnp.float32)
    weight = pair_mask(valid, ranks).astype(jnp.float32).reshape(-1)  # (B*K*K,)
    diff = (rewards[:, :, None] - rewards[:, None, :]).reshape(-1)  # r_better - r_worse
    confidence = jax.nn.sigmoid(jnp.abs(diff))
    correct = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
    bins = jnp.clip(((confidence - 0.5) * 2 * n_bins).astype(jnp.int32), 0, n_bins - 1)
    one_hot = jax.nn.one_hot(bins, n_bins) * weight[:, None]  # (pairs, n_bins)
    count = one_hot.sum(0)
    gap = jnp.abs((one_hot * correct[:, None]).sum(0) - (one_hot * confidence[:, None]).sum(0))
    return gap.sum() / jnp.maximum(count.sum(), 1.0)


def reward_model_metrics(
    rewards: jax.Array, valid: jax.Array, ranks: jax.Array | None = None, n_bins: int = 10
) -> dict[str, jax.Array]:
    """Held-out metrics: pairwise accuracy, ECE, the loss, and the number of comparisons."""
    loss, aux = ranking_loss(rewards, valid, ranks)
    return {
        "loss": loss,
        "accuracy": aux["accuracy"],
        "ece": expected_calibration_error(rewards, valid, ranks, n_bins),
        "pairs": aux["pairs"],
    }


class RewardNormalization(NamedTuple):
    """r ↦ gain · r + bias, float32 scalars."""

    gain: jax.Array
    bias: jax.Array

    def apply(self, rewards: jax.Array) -> jax.Array:
        return (self.gain * rewards.astype(jnp.float32) + self.bias).astype(jnp.float32)


def fit_normalization(
    reference_rewards: jax.Array, mask: jax.Array | None = None, scale: bool = False, eps: float = 1e-8
) -> RewardNormalization:
    """Bias (and with `scale`, gain) so that reference/demonstration responses score mean 0 (and std 1).

    InstructGPT: "since the RM loss is invariant to shifts in reward, we normalize the reward model using a
    bias so that the labeler demonstrations achieve a mean score of 0 before doing RL". Ziegler et al. also
    fit a gain for std 1, so the KL coefficient keeps its meaning. Statistics are global (see
    `ppo.masked_whiten`).
    """
    r = reference_rewards.astype(jnp.float32)
    m = jnp.ones_like(r) if mask is None else mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (r * m).sum() / n
    if scale:
        std = jnp.sqrt((jnp.square(r - mean) * m).sum() / n)
        gain = 1.0 / (std + eps)
    else:
        gain = jnp.float32(1.0)
    return RewardNormalization(jnp.asarray(gain, jnp.float32), jnp.asarray(-gain * mean, jnp.float32))


class RewardParams(NamedTuple):
    """What scores responses: a reward model's parameters and the weight of its log-likelihood term.

    A generative reward model scores head + Σ log p(response). Normalised (gain g, bias b), it must score
    g·head + b + g·Σ log p: `fold_normalization` puts g and b into the head, and `lm_scale` = g scales the
    likelihood (1 for a score that was never normalised; unused by a non-generative model).
    """

    params: Any  # nnx.State of the reward model
    lm_scale: jax.Array  # () float32

    @classmethod
    def unnormalised(cls, params) -> RewardParams:
        return cls(params, jnp.float32(1.0))


def fold_normalization(model: Transformer, norm: RewardNormalization, head: str = "reward") -> None:
    """Bake `norm` into the scalar head in place (w ← gain·w, b ← gain·b + bias): the model then scores
    normalised rewards itself, and a value head initialised from it starts on the same scale. A generative
    reward model's likelihood term needs the gain as well: score with `RewardParams(params, norm.gain)`."""
    h = model.heads[head]
    h["w"][...] = norm.gain * h["w"][...]
    h["b"][...] = norm.gain * h["b"][...] + norm.bias


def ranks_from_scores(scores_best_first: Sequence[float]) -> list[int]:
    """Dense ranks (0 = best) of scores sorted best first; equal scores share a rank (a tie)."""
    ranks, current = [], 0
    for i, s in enumerate(scores_best_first):
        if i and s != scores_best_first[i - 1]:
            current += 1
        ranks.append(current)
    return ranks


def pack_rankings(
    prompts: Sequence[list[int]],
    ranked_responses: Sequence[Sequence[list[int]]],
    k: int,
    length: int,
    pad_id: int,
    scores: Sequence[Sequence[float]] | None = None,
    generative: bool = False,
) -> dict[str, np.ndarray]:
    """Right-padded (prompt + response) rows for `reward_model_loss`, K slots per prompt, best first.

    ranked_responses[b] holds prompt b's responses best first (2..k of them); `scores[b]`, best first, marks
    ties (equal scores share a rank). Returns tokens (B, K, T), mask (B, K, T), valid (B, K), ranks (B, K),
    and with `generative` scored_tokens (B, K, T), 1 on the response tokens (see `reward_scores`).
    """
    n = len(prompts)
    tokens = np.full((n, k, length), pad_id, np.int32)
    mask = np.zeros((n, k, length), np.int32)
    valid = np.zeros((n, k), np.int32)
    ranks = np.tile(np.arange(k, dtype=np.int32), (n, 1))
    scored = np.zeros((n, k, length), np.int32)
    for b, (prompt, responses) in enumerate(zip(prompts, ranked_responses, strict=True)):
        if not 1 <= len(responses) <= k:
            raise ValueError(f"ranking {b}: {len(responses)} responses; expected 1..{k}")
        for j, response in enumerate(responses):
            row = list(prompt) + list(response)
            if len(row) > length:
                raise ValueError(
                    f"ranking {b}, response {j}: prompt ({len(prompt)} tokens) + response ({len(response)} "
                    f"tokens) is longer than the context of {length} tokens"
                )
            tokens[b, j, : len(row)] = row
            mask[b, j, : len(row)] = 1
            scored[b, j, len(prompt) : len(row)] = 1
            valid[b, j] = 1
        if scores is not None:
            if len(scores[b]) != len(responses):
                raise ValueError(f"ranking {b}: {len(scores[b])} scores for {len(responses)} responses")
            if any(later > earlier for earlier, later in zip(scores[b], scores[b][1:], strict=False)):
                raise ValueError(f"ranking {b}: scores {list(scores[b])} are not best first (non-increasing)")
            ranks[b, : len(responses)] = ranks_from_scores(list(scores[b]))
    packed = {"tokens": tokens, "mask": mask, "valid": valid, "ranks": ranks}
    return packed | ({"scored_tokens": scored} if generative else {})
