"""Supervised fine-tuning: next-token loss on response tokens only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from oversight.models.kernels import target_logprobs
from oversight.models.transformer import Transformer, positions_from_mask
from oversight.training.batched import map_batches


def token_logprobs(model: Transformer, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """log π(tokens[:, t+1] | tokens[:, :t+1]) in float32, (B, T-1). Position ids follow the mask."""
    hidden, _ = model(tokens, positions_from_mask(mask), mask)
    return next_token_logprobs(model, hidden, tokens)


def next_token_logprobs(model: Transformer, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
    """`token_logprobs` from the trunk's hidden states (B, T, D) already computed (one forward for two uses)."""
    return target_logprobs(model.logits(hidden[:, :-1]), tokens[:, 1:])  # (B, T-1)


def response_nll(model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Per row: the summed negative log-likelihood of the tokens where `loss_mask` is 1 (the response and its
    stop token), and how many there are. Both (B,) float32."""
    logp = token_logprobs(model, batch["tokens"], batch["mask"])  # (B, T-1)
    weight = batch["loss_mask"][:, 1:].astype(jnp.float32)  # (B, T-1)
    return -(logp * weight).sum(-1), weight.sum(-1)


def sft_loss(model: Transformer, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean negative log-likelihood of the tokens where `loss_mask` is 1 (the response and its stop token)."""
    # Summed over the whole batch at once, not through response_nll's per-row sums: the training loss keeps the
    # summation order (and so the float results) it always had.
    logp = token_logprobs(model, batch["tokens"], batch["mask"])  # (B, T-1)
    weight = batch["loss_mask"][:, 1:].astype(jnp.float32)
    n = jnp.maximum(weight.sum(), 1.0)
    return -(logp * weight).sum() / n, {"response_tokens": weight.sum()}


def heldout_loss(
    nll_fn: Callable[[dict[str, Any]], tuple[Any, Any]],
    data: dict[str, np.ndarray],
    rows: int,
    *,
    mesh,
    rules,
) -> float:
    """`sft_loss` over every row of `data` (`pack_examples` rows), token-weighted exactly as one batch of them
    would be, in batches of `rows` (`map_batches`); `nll_fn(batch)` is a jitted `response_nll`."""
    nll, tokens = map_batches(nll_fn, data, rows, mesh=mesh, rules=rules)  # (N,), (N,)
    return float(nll.sum(dtype=np.float64) / max(tokens.sum(dtype=np.float64), 1.0))


def pack_examples(
    prompts: list[list[int]], responses: list[list[int]], length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Right-padded (prompt + response) rows: tokens, attention mask, and a loss mask on the response."""
    n = len(prompts)
    tokens = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    loss_mask = np.zeros((n, length), np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) + len(r) > length:
            raise ValueError(
                f"example {i}: prompt ({len(p)} tokens) + response ({len(r)} tokens) is longer than the "
                f"context of {length} tokens"
            )
        tokens[i, : len(p) + len(r)] = p + r
        mask[i, : len(p) + len(r)] = 1
        loss_mask[i, len(p) : len(p) + len(r)] = 1
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def epoch_batches(data: dict[str, np.ndarray], batch_size: int, seed: int):
    """`batch_fn(step)`: a fresh permutation per epoch, a pure function of (seed, step) so resume is exact."""
    n = len(next(iter(data.values())))
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    per_epoch = n // batch_size

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        idx = order[i * batch_size : (i + 1) * batch_size]
        return {k: v[idx] for k, v in data.items()}

    return batch_fn
