"""Decoder-only transformer in Flax NNX: the GPT-2 and Llama families, LM and scalar heads, KV cache.

Shapes: B batch, T new tokens, S key/value slots (T without a cache, the cache length with one),
D model width, H query heads, K key/value heads, E head width, F MLP width,
V vocabulary. Every parameter carries logical axis names (`out_sharding` metadata); the parallel layer maps
them onto a mesh, so this file never names one. Weight products and attention go through `kernels`: plain JAX,
or on CPU kernels tuned for XLA there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from oversight.models import kernels
from oversight.models.config import ModelConfig


def _param(value: jax.Array, names: tuple[str | None, ...]) -> nnx.Param:
    # eager_sharding=False: modules are built unsharded (or inside a jit with out_shardings); placement is
    # the parallel layer's job, which reads these logical names.
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, names) -> nnx.Param:
    return _param(std * jax.random.normal(rngs.params(), shape, jnp.float32), names)


def _zeros(shape: tuple[int, ...], names) -> nnx.Param:
    return _param(jnp.zeros(shape, jnp.float32), names)


class LoRA(nnx.Module):
    """A low-rank update beside a frozen weight (Hu et al. 2021): x (.., d_in) -> (alpha / rank) * x A B.

    B starts at zero, so a model with adapters computes exactly what its base does until they train; A is
    normal with std 1 / sqrt(d_in). Both are `nnx.LoRAParam`, which `trainable` selects."""

    def __init__(self, d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs, name_in: str | None):
        r = cfg.lora_rank
        a = jax.random.normal(rngs.params(), (d_in, r), jnp.float32) / math.sqrt(d_in)
        self.a = nnx.LoRAParam(a, out_sharding=(name_in, None), eager_sharding=False)  # (d_in, r)
        self.b = nnx.LoRAParam(
            jnp.zeros((r, d_out), jnp.float32), out_sharding=(None, None), eager_sharding=False
        )
        self.scale = cfg.lora_alpha / r

    def __call__(self, x: jax.Array) -> jax.Array:
        low = kernels.matmul(x, self.a[...].astype(x.dtype))  # (.., r)
        return kernels.matmul(low, (self.scale * self.b[...]).astype(x.dtype))  # (.., d_out)


def _lora(cfg: ModelConfig, rngs: nnx.Rngs, d_in: int, d_out: int, name_in: str | None) -> LoRA | None:
    return LoRA(d_in, d_out, cfg, rngs, name_in) if cfg.lora_rank else None


def trainable(module: nnx.Module) -> nnx.filterlib.Filter:
    """What training updates in `module` (an optimizer's `wrt`, the parameters gradients are taken for):
    every parameter, or, when the module carries LoRA adapters, only them and the scalar heads."""
    if jax.tree.leaves(nnx.state(module, nnx.LoRAParam)):
        return nnx.Any(nnx.LoRAParam, nnx.PathContains("heads"))
    return nnx.Param


class KVCache(NamedTuple):
    """Keys and values of every layer; slot s of row b holds the token written there by prefill or decode."""

    k: tuple[jax.Array, ...]  # L x (B, K, S, E)
    v: tuple[jax.Array, ...]  # L x (B, K, S, E)

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> KVCache:
        shape = (batch, cfg.kv_heads, length, cfg.head_width)
        dtype = jnp.dtype(cfg.dtype)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
        )


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids for left-padded rows: 0 at the first real token, counting real tokens only. (B, T)"""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


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
        d, h, k, e = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_width
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
        self.lora_q = _lora(cfg, rngs, d, h * e, "embed")
        self.lora_k = _lora(cfg, rngs, d, k * e, "embed")
        self.lora_v = _lora(cfg, rngs, d, k * e, "embed")
        self.lora_o = _lora(cfg, rngs, h * e, d, None)

    def __call__(self, x, positions, mask, cache_k=None, cache_v=None, cache_index=0):
        """x (B, T, D); positions (B, T); mask (B, T, S) bool, causal when there is no cache. Returns (B, T, D)
        and the updated cache."""
        dtype = x.dtype

        # Heads-major (B, heads, T, E), as the KV cache. Contracting in the weights' own (D, heads·E) layout, then
        # moving the head axis, spares XLA on CPU a transposed copy of every weight at every decoding step.
        def project(w, lora):  # (D, heads, E) -> (B, heads, T, E)
            d, n, e = w.shape
            y = kernels.matmul(x, w[...].astype(dtype).reshape(d, n * e))  # (B, T, heads·E)
            if lora is not None:
                y = y + lora(x)
            return y.reshape(*y.shape[:2], n, e).transpose(0, 2, 1, 3)

        q = project(self.wq, self.lora_q)  # (B, H, T, E)
        k, v = project(self.wk, self.lora_k), project(self.wv, self.lora_v)  # 2 x (B, K, T, E)
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
        out = kernels.attention(q, k, v, mask, causal=cache_k is None)  # (B, H, T, E)
        b, h, t, e = out.shape
        # (H, E) flattened on both sides: the product contracts in wo's own layout (else XLA on CPU copies wo).
        out = out.transpose(0, 2, 1, 3).reshape(b, t, h * e)  # (B, T, H·E)
        y = kernels.matmul(out, self.wo[...].astype(dtype).reshape(h * e, -1))  # (B, T, D)
        if self.lora_o is not None:
            y = y + self.lora_o(out)
        if self.bo is not None:
            y = y + self.bo[...].astype(dtype)
        return y, cache_k, cache_v


class MLP(nnx.Module):
    """GELU MLP with biases (GPT-2) or SwiGLU without (Llama)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.mlp_width
        std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.gated = cfg.family == "llama"
        self.w_in = _normal(rngs, (d, f), std, ("embed", "mlp"))
        self.w_gate = _normal(rngs, (d, f), std, ("embed", "mlp")) if self.gated else None
        self.w_out = _normal(rngs, (f, d), out_std, ("mlp", "embed"))
        self.b_in = None if self.gated else _zeros((f,), ("mlp",))
        self.b_out = None if self.gated else _zeros((d,), ("embed",))
        self.lora_in = _lora(cfg, rngs, d, f, "embed")
        self.lora_gate = _lora(cfg, rngs, d, f, "embed") if self.gated else None
        self.lora_out = _lora(cfg, rngs, f, d, "mlp")

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype

        def product(x, w, lora):  # x (B, T, in) @ w (in, out), plus the adapter's update
            y = kernels.matmul(x, w[...].astype(dtype))
            return y if lora is None else y + lora(x)

        h = product(x, self.w_in, self.lora_in)  # (B, T, F)
        if self.gated:
            h = jax.nn.silu(product(x, self.w_gate, self.lora_gate)) * h
        else:
            h = jax.nn.gelu(h + self.b_in[...].astype(dtype), approximate=True)  # GPT-2's "gelu_new"
        y = product(h, self.w_out, self.lora_out)  # (B, T, D)
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
        `kernels.materialize_grad` after every block: the same values, and on CPU for small training batches a
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
                x = kernels.materialize_grad(x)
            new_k.append(ck)
            new_v.append(cv)
        x = self.final_norm(x)
        return x, (KVCache(tuple(new_k), tuple(new_v)) if cache is not None else None)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head, float32 logits (B, T, V)."""
        w = self.embed[...].T if self.lm_head is None else self.lm_head[...]  # (D, V)
        return kernels.matmul(hidden, w.astype(hidden.dtype), jnp.float32)

    def next_token_logits(self, hidden: jax.Array) -> jax.Array:
        """LM head at one position per row, as in a decoding step: hidden (B, D) -> float32 (B, V)."""
        if self.lm_head is not None:
            return self.logits(hidden[:, None])[:, 0]
        return kernels.tied_head_step(hidden, self.embed[...].astype(hidden.dtype))

    def scalar(self, hidden: jax.Array, head: str) -> jax.Array:
        """A scalar head (reward, value, discriminator…) at every position, float32 (B, T)."""
        if head not in self.heads:
            raise KeyError(f"model has no scalar head {head!r}; configured heads: {list(self.heads)}")
        h = self.heads[head]
        return jnp.einsum("btd,d->bt", hidden.astype(jnp.float32), h["w"][...]) + h["b"][...]
