"""Forward passes over whole data sets in fixed-size batches.

One call over N rows holds every row's activations at once: with a real vocabulary (49,152 tokens) a scoring
pass over a few thousand rows of 64 tokens materialises (N, T, V) float32 logits, tens of GB. `map_batches`
runs one jitted function over batches of exactly `rows` rows instead (the last batch padded by repeating its
final row, the padding rows' outputs dropped), so the function compiles once, for one shape, and peak memory
is set by `rows`, not by N. `batch_rows` picks `rows` from the model's widest per-token activation.

Aggregates (a token-weighted loss, accuracy over pairs) are computed by the caller from the per-row outputs,
so they equal the one-batch value up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from oversight.models import ModelConfig
from oversight.parallel import shard_batch

# Bytes of float32 activations one batch may hold in its widest layer (the logits, on a real vocabulary).
ACTIVATION_BUDGET_BYTES = 256 * 2**20


def batch_rows(cfg: ModelConfig, seq_len: int, seqs_per_row: int = 1, *, logits: bool = True) -> int:
    """Rows per batch such that the widest float32 activation of a forward pass over rows of `seqs_per_row`
    sequences of `seq_len` tokens (a ranking's K responses, a quote's candidates), (rows, seqs_per_row,
    seq_len, width), fits in `ACTIVATION_BUDGET_BYTES`; at least 1. `width` is the largest of the MLP's gate
    and up projections, a token's attention scores and, with `logits` (the pass reads the LM head at every
    token), the vocabulary."""
    width = max(2 * cfg.mlp_width, cfg.n_heads * seq_len, cfg.d_model)
    if logits:
        width = max(width, cfg.vocab_size)
    return max(1, ACTIVATION_BUDGET_BYTES // (4 * seqs_per_row * seq_len * width))


def map_batches(
    fn: Callable[[dict[str, Any]], Any],
    data: Mapping[str, np.ndarray],
    rows: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules: dict[str, list[str]] | None = None,
) -> Any:
    """`fn(batch)` over `data`'s rows (arrays of one leading length N) in batches of one shape, returning
    `fn`'s outputs (a pytree of arrays whose leading axis is the batch's rows) for the N rows, as numpy.

    Every batch holds `rows` rows, rounded up to a multiple of the mesh's batch-axis devices when `mesh` is
    given (batches are then placed with `shard_batch`): the last one (or the only one, when N is smaller) is
    padded by repeating its final row and the padding rows' outputs are dropped, so neither a ragged tail nor
    a smaller data set compiles `fn` again. A pass over one fixed data set may ask for min(rows, N) rows to
    skip the padding. `fn` must treat rows independently (an output row depends on its input row only)."""
    lengths = {k: len(v) for k, v in data.items()}
    n = next(iter(lengths.values()), 0)
    if any(length != n for length in lengths.values()):
        raise ValueError(f"map_batches: arrays of different lengths {lengths}")
    if n == 0:
        raise ValueError("map_batches: no rows")
    if rows < 1:
        raise ValueError(f"map_batches: rows={rows} must be >= 1")
    size = rows
    if mesh is not None:
        devices = math.prod(mesh.shape[a] for a in (rules or {}).get("batch", []))
        size = -(-size // devices) * devices
    outs = []
    for start in range(0, n, size):
        batch = {k: np.asarray(v[start : start + size]) for k, v in data.items()}
        real = len(next(iter(batch.values())))
        if real < size:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], size - real, 0)]) for k, v in batch.items()}
        out = fn(batch if mesh is None else shard_batch(batch, mesh, rules or {}))
        if mesh is not None:  # rows sharded over the mesh, on a multi-host job partly on other processes
            out = multihost_utils.process_allgather(out, tiled=True)
        outs.append(jax.tree.map(lambda x, real=real: np.asarray(jax.device_get(x))[:real], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
