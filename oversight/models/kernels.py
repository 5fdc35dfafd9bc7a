"""The transformer's products, attention and log-probabilities: plain JAX, or kernels tuned for XLA on CPU.

One switch, `cpu_kernels()`, picks the path: on the CPU backend the kernels below (custom gradients and layouts
that XLA on CPU handles badly left alone, each with the measurement that justified it), elsewhere plain JAX
with autodiff. Both paths compute the same values and gradients (tests/models/test_kernels.py).

Shapes as in transformer.py: B batch, T queries, S keys, H query heads, K key/value heads, G = H // K,
E head width, V vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp

from oversight.models.config import KERNEL_PATHS

_FORCE_CPU_KERNELS: bool | None = None  # set by `use_cpu_kernels`; None: decided by platform

_MASKED = -1e30  # finite, so fully masked rows (left padding) give uniform attention rather than NaN
# Without a cache, attention runs in up to this many query blocks of at least this many rows (`causal_blocks`).
_MAX_CAUSAL_BLOCKS = 4
_MIN_CAUSAL_BLOCK = 64


def cpu_kernels() -> bool:
    """Whether the model uses the CPU kernels: on the CPU backend, unless `use_cpu_kernels` says otherwise.

    Read when a function is traced."""
    return jax.default_backend() == "cpu" if _FORCE_CPU_KERNELS is None else _FORCE_CPU_KERNELS


@contextlib.contextmanager
def use_cpu_kernels(on: bool):
    """Trace with the CPU kernels on or off, whatever the platform (tests compare the two paths).

    JAX's caches are cleared on entry and exit: no function keeps a program traced with the other path."""
    global _FORCE_CPU_KERNELS
    before, _FORCE_CPU_KERNELS = _FORCE_CPU_KERNELS, on
    jax.clear_caches()
    try:
        yield
    finally:
        _FORCE_CPU_KERNELS = before
        jax.clear_caches()


def kernel_path(path: str):
    """The context of a run on the float path `path` (one of KERNEL_PATHS): "auto" changes nothing."""
    if path not in KERNEL_PATHS:
        raise ValueError(f"kernels={path!r}; known paths: {KERNEL_PATHS}")
    return contextlib.nullcontext() if path == "auto" else use_cpu_kernels(path == "cpu")


# --- The switched operations the model calls ------------------------------------------------------------------


def matmul(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """x (..., I) @ w (I, O) -> (..., O), in `out_dtype` if given: every weight product of the model."""
    if cpu_kernels():
        return _dense(x, w, out_dtype)
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool) -> jax.Array:
    """Softmax attention: q (B, H, T, E), k and v (B, K, S, E), mask (B, T, S) bool -> (B, H, T, E).

    `causal`: S = T and the mask is causal (a forward pass without a cache)."""
    if cpu_kernels():
        return _grouped_attention(q, k, v, mask, causal)
    # (B, heads, T, E) <-> JAX's (B, T, heads, E). cuDNN's fused attention (issue 26) is not chosen on GPU yet:
    # it takes 16-bit inputs only, head widths a multiple of 8, even lengths with a mask; untested here.
    out = jax.nn.dot_product_attention(
        *(x.transpose(0, 2, 1, 3) for x in (q, k, v)), mask=mask[:, None], implementation="xla"
    )
    return out.transpose(0, 2, 1, 3)


def materialize_grad(x: jax.Array) -> jax.Array:
    """Identity; on CPU its gradient is computed once, into its own buffer (see `_materialized_cotangent`)."""
    return _materialized_cotangent(x) if cpu_kernels() else x


def tied_head_step(hidden: jax.Array, embed: jax.Array) -> jax.Array:
    """The tied LM head at one position per row (a decoding step): hidden (B, D), embed (V, D) -> float32 (B, V).

    On CPU, with a few rows, XLA copies the whole embedding into transposed layout for the product at every
    step. Computed vocabulary-major (V, B) behind an optimisation barrier (so XLA cannot fold the transpose back
    in), the product reads the embedding as stored: `small`'s head 1.75 -> 1.27 ms a step."""
    if not cpu_kernels():
        return jnp.einsum("bd,vd->bv", hidden, embed, preferred_element_type=jnp.float32)
    logits_vb = jnp.einsum("bd,vd->vb", hidden, embed, preferred_element_type=jnp.float32)  # (V, B)
    return jax.lax.optimization_barrier(logits_vb).T


def target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[target]: logits (..., V) float32, integer targets (...) -> (...)."""
    if cpu_kernels():
        return _target_logprobs(logits, targets)
    return _target_logprobs_fwd(logits, targets)[0]


# --- CPU kernels ------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, w, out_dtype):
    """`matmul` with a hand-written backward: x^T g for the weight gradient, read in both operands' layouts.

    Autodiff gives it as (g^T x)^T, and XLA on CPU writes the activation gradient and the activation into
    transposed layout to feed it (W3 `small`: ~55 such copies a minibatch step; the tied LM head's (B·T, V)
    logits gradient, 0.22 s of a 3.3 s `small` SFT step). Measured: W3 iterations 5-8% faster, W4 `small` steps
    2-5%. A tied head passes `embed.T`: its gradient is then the transpose of a (D, V) product, not of g."""
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)


def _dense_fwd(x, w, out_dtype):
    return _dense(x, w, out_dtype), (x, w)


def _dense_bwd(out_dtype, residuals, g):  # g (..., O), in out_dtype
    x, w = residuals
    d_x = jnp.einsum("...o,io->...i", g, w.astype(g.dtype))  # (..., I)
    d_w = jnp.einsum(
        "mi,mo->io", x.reshape(-1, x.shape[-1]).astype(g.dtype), g.reshape(-1, g.shape[-1])
    )  # (I, O)
    return d_x.astype(x.dtype), d_w.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def causal_blocks(t: int) -> list[tuple[int, int]]:
    """The query rows [start, end) of each causal attention block of a T-token forward pass (no cache).

    Block [start, end) needs keys [0, end) only. Four blocks compute 10/16 of the score matrix (W4 `small`'s
    attention core, forward and backward, -28% on CPU); rows of fewer than 64 cost more than they save."""
    n = max(1, min(_MAX_CAUSAL_BLOCKS, t // _MIN_CAUSAL_BLOCK))
    return [(t * j // n, t * (j + 1) // n) for j in range(n)]


def _grouped_attention(q, k, v, mask, causal):
    """`attention` with the query heads grouped by key head, q (B, K, G, T, E), and causal query blocks.

    With one query head per key head there is no G axis: a unit G axis made XLA on CPU compute the value
    gradient in transposed layout (the attention core 28% slower). Heads-major layout throughout: the products
    batch over (B, K) with no transposes, ~25% faster per attention layer than (B, T, heads, E)."""
    b, h, t, e = q.shape
    n_kv, dtype = k.shape[1], q.dtype
    grouped = n_kv < h
    qa = "bkgt" if grouped else "bkt"  # the query's axes before E
    if grouped:
        q = q.reshape(b, n_kv, h // n_kv, t, e)
    visible = mask[:, None, None] if grouped else mask[:, None]  # broadcasts over K (and G)

    def attend(q, k, v, visible):  # q (B, K, [G,] T', E), k and v (B, K, S', E) -> (B, K, [G,] T', E)
        scores = jnp.einsum(f"{qa}e,bkse->{qa}s", q, k, preferred_element_type=jnp.float32) / math.sqrt(e)
        scores = jnp.where(visible, scores, _MASKED)  # (B, K, [G,] T', S')
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        return jnp.einsum(f"{qa}s,bkse->{qa}e", probs, v)

    if not causal:
        return attend(q, k, v, visible).reshape(b, h, t, e)
    blocks = [
        attend(q[..., lo:hi, :], k[:, :, :hi], v[:, :, :hi], visible[..., lo:hi, :hi])
        for lo, hi in causal_blocks(t)
    ]
    return jnp.concatenate(blocks, axis=-2).reshape(b, h, t, e)


@jax.custom_vjp
def _materialized_cotangent(x):
    """Identity whose backward pass has XLA compute the incoming gradient once, into its own buffer.

    The residual stream's gradient at a block boundary sums every later block's contribution. For small batches
    XLA on CPU fuses a fresh copy of that sum into each consumer, quadratic in depth (W3 `small` minibatch:
    fusions of up to 72 terms, 19% of the update). A conditional cannot be fused; its predicate is data, which
    XLA cannot fold, and both branches return the gradient unchanged."""
    return x


def _materialized_fwd(x):
    return x, None


def _materialized_bwd(_, g):
    first = g.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda g: g, lambda g: g * 1.0, g),)  # false only for a NaN


_materialized_cotangent.defvjp(_materialized_fwd, _materialized_bwd)


@jax.custom_vjp
def _target_logprobs(logits, targets):
    """`target_logprobs` with a hand-written gradient g (one_hot(target) - softmax(logits)): one pass over logits.

    Left to autodiff, the gather's gradient is a scatter (~15% of an SFT step on CPU), and XLA on CPU
    materialises the one-hot product and the exponentials for its library reductions: three more (..., V) passes."""
    return _target_logprobs_fwd(logits, targets)[0]


def _target_logprobs_fwd(logits, targets):
    logz = jax.nn.logsumexp(logits, axis=-1)  # (...)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # (...)
    return target - logz, (logits, logz, targets)


def _target_logprobs_bwd(residuals, g):  # g (...)
    logits, logz, targets = residuals
    one_hot = targets[..., None] == jnp.arange(logits.shape[-1])  # (..., V)
    softmax = jnp.exp(logits - logz[..., None])
    return g[..., None] * (one_hot.astype(logits.dtype) - softmax), None


_target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)
