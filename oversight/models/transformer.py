"""Decoder-only transformer in Flax NNX: the GPT-2 and Llama families, LM and scalar heads, KV cache.

Shapes: B batch, T new tokens, S key/value slots (T without a cache, the cache length with one),
D model width, H query heads, K key/value heads, G = H // K heads per group, E head width, F MLP width,
V vocabulary. Every parameter carries logical axis names (`out_sharding` metadata); the parallel layer maps
them onto a mesh, so this file never names one.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from oversight.models.config import ModelConfig

_MASKED = -1e30  # finite, so fully masked rows (left padding) give uniform attention rather than NaN
# Without a cache, attention runs in up to this many query blocks of at least this many rows; each block
# attends only to the keys up to its last row (the rest are causally masked), see `causal_blocks`.
_MAX_CAUSAL_BLOCKS = 4
_MIN_CAUSAL_BLOCK = 64


def causal_blocks(t: int) -> list[tuple[int, int]]:
    """The query rows [start, end) of each causal attention block of a T-token forward pass (no cache).

    Block [start, end) needs keys [0, end) only. Four blocks compute 10/16 of the full score matrix (the
    attention core of W4 `small`, forward and backward, -28% on the 2-core CPU); rows of fewer than 64 cost
    more in small products than they save."""
    n = max(1, min(_MAX_CAUSAL_BLOCKS, t // _MIN_CAUSAL_BLOCK))
    return [(t * j // n, t * (j + 1) // n) for j in range(n)]


def _param(value: jax.Array, names: tuple[str | None, ...]) -> nnx.Param:
    # eager_sharding=False: modules are built unsharded (or inside a jit with out_shardings); placement is
    # the parallel layer's job, which reads these logical names.
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, names) -> nnx.Param:
    return _param(std * jax.random.normal(rngs.params(), shape, jnp.float32), names)


def _zeros(shape: tuple[int, ...], names) -> nnx.Param:
    return _param(jnp.zeros(shape, jnp.float32), names)


class KVCache(NamedTuple):
    """Keys and values of every layer; slot s of row b holds the token written there by prefill or decode."""

    k: tuple[jax.Array, ...]  # L x (B, K, S, E)
    v: tuple[jax.Array, ...]  # L x (B, K, S, E)

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> KVCache:
        shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
        dtype = jnp.dtype(cfg.dtype)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
        )


@jax.custom_vjp
def materialized_cotangent(x: jax.Array) -> jax.Array:
    """Identity whose backward pass has XLA compute the incoming gradient once, into its own buffer.

    The residual stream's gradient at a block boundary is the sum of every later block's contribution. For
    small training batches XLA on CPU treats that sum as cheap elementwise work and fuses a fresh copy of it
    into each consumer, quadratic in depth (a W3 PPO minibatch of `small`: fusions summing up to 72 terms,
    19% of the update). A conditional cannot be fused, so a gradient passing through one is computed once.
    Its predicate is data, which XLA cannot fold; both branches return the gradient unchanged.
    """
    return x


def _materialized_fwd(x):
    return x, None


def _materialized_bwd(_, g):
    first = g.reshape(-1)[0]
    return (jax.lax.cond(first == first, lambda g: g, lambda g: g * 1.0, g),)  # false only for a NaN


materialized_cotangent.defvjp(_materialized_fwd, _materialized_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """x (..., I) @ w (I, O) -> (..., O), in `out_dtype` if given (the LM heads ask for float32 logits): every
    weight product of the model (I, O: the input and output widths).

    Autodiff gives the weight gradient as (g^T x)^T, a product followed by a transpose; XLA on CPU folds the
    transpose into the product's operands and writes the activation gradient, and the activation, into
    transposed layout to feed it (W3 `small` update: ~55 such copies a minibatch step; for the tied LM head, a
    copy of the (B·T, V) logits gradient, 0.22 s of a 3.3 s `small` SFT step). The backward pass here computes
    x^T g directly, reading both in their own layouts: W3 iterations 5-8% faster, W4 `small` steps 2-5%
    (`tiny` within noise). A tied head passes the embedding transposed, `dense(h, embed.T)`: its gradient is
    then (h^T g)^T, the transpose of a (D, V) product, not a transposed copy of g.
    """
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)


def _dense_fwd(x, w, out_dtype):
    return dense(x, w, out_dtype), (x, w)


def _dense_bwd(out_dtype, residuals, g):  # g (..., O), in out_dtype
    x, w = residuals
    d_x = jnp.einsum("...o,io->...i", g, w.astype(g.dtype))  # (..., I)
    d_w = jnp.einsum(
        "mi,mo->io", x.reshape(-1, x.shape[-1]).astype(g.dtype), g.reshape(-1, g.shape[-1])
    )  # (I, O)
    return d_x.astype(x.dtype), d_w.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids for left-padded rows: 0 at the first real token, counting real tokens only. (B, T)"""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


@jax.custom_vjp
def target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[target]: logits (..., V) float32, integer targets (...) -> (...).

    The value autodiff would give, with a hand-written gradient g (one_hot(target) - softmax(logits)): one
    elementwise pass over the logits. Left to autodiff, the target's logit needs a one-hot product (a
    gather's gradient is a scatter, ~15% of an SFT step on CPU), and XLA on CPU materialises that product and
    the exponentials for its library reductions: three more (..., V)-sized passes."""
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


target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split convention (as in the Hugging Face Llama code). x (B, N, T, E)."""
    e = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))  # (E/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, E/2)
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, None]  # (B, 1, T, E)
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, None]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : e // 2], x32[..., e // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Norm(nnx.Module):
    """LayerNorm (GPT-2) or RMSNorm (Llama), computed in float32."""

    def __init__(self, cfg: ModelConfig):
        self.rms = cfg.family == "llama"
        self.eps = cfg.norm_eps
        self.scale = _param(jnp.ones((cfg.d_model,), jnp.float32), ("norm",))
        self.bias = None if self.rms else _zeros((cfg.d_model,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.rms:
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * self.scale[...]
        else:
            mean = jnp.mean(x32, -1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, k, e = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.family, self.rope_theta = cfg.family, cfg.rope_theta
        self.wq = _normal(rngs, (d, h, e), std, ("embed", "heads", "head_dim"))
        self.wk = _normal(rngs, (d, k, e), std, ("embed", "kv_heads", "head_dim"))
        self.wv = _normal(rngs, (d, k, e), std, ("embed", "kv_heads", "head_dim"))
        self.wo = _normal(rngs, (h, e, d), out_std, ("heads", "head_dim", "embed"))
        qkv_bias = cfg.family == "gpt2" or cfg.attention_bias
        self.bq = _zeros((h, e), ("heads", "head_dim")) if qkv_bias else None
        self.bk = _zeros((k, e), ("kv_heads", "head_dim")) if qkv_bias else None
        self.bv = _zeros((k, e), ("kv_heads", "head_dim")) if qkv_bias else None
        self.bo = _zeros((d,), ("embed",)) if cfg.family == "gpt2" else None

    def __call__(self, x, positions, mask, cache_k=None, cache_v=None, cache_index=0):
        """x (B, T, D); positions (B, T); mask (B, T, S) bool, causal when there is no cache. Returns (B, T, D)
        and the updated cache."""
        # Heads-major layout (B, heads, T, E) throughout: the attention matmuls then batch over (B, K) with no
        # transposes, about 25% faster per attention layer on CPU than a (B, T, heads, E) layout.
        dtype = x.dtype

        # The projections contract in the weights' own layout, then move the head axis: written as one einsum
        # to (B, H, T, E), XLA on CPU computes it transposed and copies every weight matrix into transposed
        # layout first, at every step of a decoding loop (`small`: 24 MB a step, sampling 15% slower).
        def project(w):  # (D, heads, E) -> (B, heads, T, E)
            d, n, e = w.shape
            y = dense(x, w[...].astype(dtype).reshape(d, n * e))  # (B, T, heads·E)
            return y.reshape(*y.shape[:2], n, e).transpose(0, 2, 1, 3)

        q, k, v = project(self.wq), project(self.wk), project(self.wv)
        if self.bq is not None:
            q = q + self.bq[...].astype(dtype)[:, None]
            k = k + self.bk[...].astype(dtype)[:, None]
            v = v + self.bv[...].astype(dtype)[:, None]
        if self.family == "llama":
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        if cache_k is not None:
            slot = (0, 0, cache_index, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), slot)  # (B, K, S, E)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), slot)
            cache_k, cache_v = k, v
        b, h, t, e = q.shape
        n_kv = k.shape[1]
        # Grouped-query attention: G = H / K query heads share each key head, q (B, K, G, T, E). With one query
        # head per key head there is no G axis: a unit G axis made XLA on CPU compute the value gradient in
        # transposed layout (the attention core's forward and backward 28% slower).
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

        if cache_k is None:  # S = T and the mask is causal (Transformer builds it so): skip masked key blocks
            out = jnp.concatenate(
                [
                    attend(q[..., lo:hi, :], k[:, :, :hi], v[:, :, :hi], visible[..., lo:hi, :hi])
                    for lo, hi in causal_blocks(t)
                ],
                axis=-2,
            )
        else:
            out = attend(q, k, v, visible)
        # Flattening (H, E) on both sides fixes the contraction order to wo's own layout: contracting the two
        # axes as an einsum, XLA on CPU chose (E, H) order and copied every wo into it at every decoding step.
        out = out.reshape(b, h, t, e).transpose(0, 2, 1, 3).reshape(b, t, h * e)  # (B, T, H·E)
        y = dense(out, self.wo[...].astype(dtype).reshape(h * e, -1))  # (B, T, D)
        if self.bo is not None:
            y = y + self.bo[...].astype(dtype)
        return y, cache_k, cache_v


class MLP(nnx.Module):
    """GELU MLP with biases (GPT-2) or SwiGLU without (Llama)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.gated = cfg.family == "llama"
        self.w_in = _normal(rngs, (d, f), std, ("embed", "mlp"))
        self.w_gate = _normal(rngs, (d, f), std, ("embed", "mlp")) if self.gated else None
        self.w_out = _normal(rngs, (f, d), out_std, ("mlp", "embed"))
        self.b_in = None if self.gated else _zeros((f,), ("mlp",))
        self.b_out = None if self.gated else _zeros((d,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        h = dense(x, self.w_in[...].astype(dtype))  # (B, T, F)
        if self.gated:
            h = jax.nn.silu(dense(x, self.w_gate[...].astype(dtype))) * h
        else:
            h = jax.nn.gelu(h + self.b_in[...].astype(dtype), approximate=True)  # GPT-2's "gelu_new"
        y = dense(h, self.w_out[...].astype(dtype))  # (B, T, D)
        return y if self.gated else y + self.b_out[...].astype(dtype)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, cache_k=None, cache_v=None, cache_index=0):
        a, cache_k, cache_v = self.attn(self.attn_norm(x), positions, mask, cache_k, cache_v, cache_index)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), cache_k, cache_v


class Transformer(nnx.Module):
    """The trunk plus heads: `__call__` gives final hidden states, `logits` the LM head, `scalar` a scalar head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.dtype = jnp.dtype(cfg.dtype)
        self.embed = _normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, ("vocab", "embed"))
        self.pos_embed = (
            _normal(rngs, (cfg.max_seq_len, cfg.d_model), 0.01, (None, "embed"))
            if cfg.family == "gpt2"
            else None
        )
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = Norm(cfg)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else _normal(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std, ("embed", "vocab"))
        )
        self.heads = nnx.Dict(
            {
                name: nnx.Dict(w=_normal(rngs, (cfg.d_model,), cfg.init_std, ("embed",)), b=_zeros((), ()))
                for name in cfg.scalar_heads
            }
        )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        kv_mask: jax.Array,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        *,
        materialize_block_grads: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final hidden states (B, T, D) for `tokens` (B, T).

        `kv_mask` (B, S) marks the key slots that hold real tokens. Without a cache S = T. With a cache of S
        slots, the T tokens are written at slots [cache_index, cache_index + T) and each attends to the real
        slots up to its own. `materialize_block_grads` passes the residual stream through
        `materialized_cotangent` after every block: the same values, and for small training batches a
        faster backward pass (W3 `small` PPO update 5.4-6.0 -> 3.8-4.5 s); for W4's SFT batch it costs ~15%.
        """
        t = tokens.shape[1]
        s = kv_mask.shape[1]
        query_slots = cache_index + jnp.arange(t)  # (T,)
        causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # (T, S)
        mask = causal[None] & kv_mask.astype(bool)[:, None, :]  # (B, T, S)

        x = jnp.take(self.embed[...], tokens, axis=0)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + jnp.take(self.pos_embed[...], positions, axis=0)
        x = x.astype(self.dtype)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            ck = cache.k[i] if cache is not None else None
            cv = cache.v[i] if cache is not None else None
            x, ck, cv = block(x, positions, mask, ck, cv, cache_index)
            if materialize_block_grads:
                x = materialized_cotangent(x)
            new_k.append(ck)
            new_v.append(cv)
        x = self.final_norm(x)
        return x, (KVCache(tuple(new_k), tuple(new_v)) if cache is not None else None)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head, float32 logits (B, T, V)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]  # (D, V)
        return dense(hidden, w.astype(hidden.dtype), jnp.float32)

    def next_token_logits(self, hidden: jax.Array) -> jax.Array:
        """LM head at one position per row, as in a decoding step: hidden (B, D) -> float32 (B, V).

        With a tied head and a few rows, XLA on CPU copies the whole (V, D) embedding into transposed layout for
        the product, at every step. Computed vocabulary-major (V, B) behind an optimisation barrier (so XLA
        cannot fold the transpose back in), the product reads the embedding as stored: `small`'s head 1.75 ->
        1.27 ms a step; the (V, B) -> (B, V) transpose of the logits is a few microseconds."""
        if self.lm_head is not None:
            return self.logits(hidden[:, None])[:, 0]
        embed = self.embed[...].astype(hidden.dtype)
        logits_vb = jnp.einsum("bd,vd->vb", hidden, embed, preferred_element_type=jnp.float32)  # (V, B)
        return jax.lax.optimization_barrier(logits_vb).T

    def scalar(self, hidden: jax.Array, head: str) -> jax.Array:
        """A scalar head (reward, value, discriminator…) at every position, float32 (B, T)."""
        if head not in self.heads:
            raise KeyError(f"model has no scalar head {head!r}; configured heads: {list(self.heads)}")
        h = self.heads[head]
        return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), h["w"][...]) + h["b"][...]
