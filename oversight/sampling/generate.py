"""jit-compiled batched generation with the KV cache.

Prompts are left-padded so that every row's last prompt token sits in the same cache slot; the decode loop
then writes one slot per step for the whole batch. Position ids come from the attention mask, so a padded
row sees exactly the positions it would see alone. Shapes are bucketed (batch and prompt length rounded up
to a fixed set), so a loop over prompts of varying length compiles a bounded number of programs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oversight.models.kernels import target_logprobs
from oversight.models.transformer import KVCache, Transformer, positions_from_mask
from oversight.settings import check_fields, setting


@dataclass(frozen=True)
class SamplingConfig:
    # Tokens generated after the prompt (the loop always runs this many steps; rows stop at a stop token).
    max_new_tokens: int = setting(64, ge=0)
    # Softmax temperature; 0 = greedy.
    temperature: float = setting(1.0, ge=0)
    # Keep only the k most likely tokens; 0 = off.
    top_k: int = setting(0, ge=0)
    # Keep the smallest set of tokens whose probability reaches p; 1.0 = off.
    top_p: float = setting(1.0, gt=0, le=1)

    def __post_init__(self) -> None:
        check_fields(self, "sampling.")


class SampleOutput(NamedTuple):
    tokens: jax.Array  # (B, N) generated tokens; pad after a row's stop token
    logprobs: jax.Array  # (B, N) float32 log π(token) at temperature (1 when greedy), unfiltered distribution
    mask: jax.Array  # (B, N) 1 for generated tokens up to and including the stop token


def _filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Top-k then top-p (nucleus) filtering; filtered tokens get -inf. logits (B, V) float32."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, V) descending
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep a token if the mass strictly before it is < p (the most likely token is always kept).
        keep_sorted = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
        cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # (B, 1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


_DRAW_BLOCK = 64  # tokens per block of the two-level draw


def _draw(logits: jax.Array, key: jax.Array) -> jax.Array:
    """One token per row from softmax(logits) (B, V) by a two-level inverse CDF: a block of the vocabulary by
    its mass, then a token inside the block. The same distribution as `jax.random.categorical` (up to float32
    rounding of the cumulative sums) from 2 uniforms per row instead of V Gumbel variates, which on CPU cost
    a third of a small model's decode step."""
    b, v = logits.shape
    blocks = -(-v // _DRAW_BLOCK)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # (B, V); filtered tokens have 0
    probs = jnp.pad(probs, ((0, 0), (0, blocks * _DRAW_BLOCK - v))).reshape(b, blocks, _DRAW_BLOCK)
    # u in (0, 1]: u = 0 could pick a leading block or token of zero mass
    u = 1.0 - jax.random.uniform(key, (2, b, 1), jnp.float32)

    def inverse_cdf(weights, u):  # (B, M), (B, 1) -> (B,) the first index whose cumulative weight reaches u
        cum = jnp.cumsum(weights, axis=-1)
        return jnp.minimum((cum < u * cum[:, -1:]).sum(-1), weights.shape[-1] - 1)

    block = inverse_cdf(probs.sum(-1), u[0])  # (B,)
    inside = jnp.take_along_axis(probs, block[:, None, None], axis=1)[:, 0]  # (B, BLOCK)
    return block * _DRAW_BLOCK + inverse_cdf(inside, u[1])


def _argmax(logits: jax.Array) -> jax.Array:
    """The first index of each row's maximum, as `jnp.argmax`: logits (B, V) -> (B,). Two plain reductions; XLA
    on CPU runs argmax's paired (value, index) reduction about 5x slower (0.62 ms a step at V = 16384)."""
    top = jnp.max(logits, axis=-1, keepdims=True)  # (B, 1)
    first = jnp.min(jnp.where(logits == top, jnp.arange(logits.shape[-1]), logits.shape[-1]), axis=-1)
    return jnp.minimum(first, logits.shape[-1] - 1)  # a row of NaNs matches nothing: stay in range


def _sample_token(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-probability under the (unfiltered) temperature-scaled distribution."""
    if cfg.temperature == 0.0:
        token = _argmax(logits)
        scaled = logits
    else:
        scaled = logits / cfg.temperature
        token = _draw(_filter_logits(scaled, cfg.top_k, cfg.top_p), key)
    logprob = target_logprobs(scaled, token)  # (B,)
    return token.astype(jnp.int32), logprob


# The decoding loop runs in at most this many segments of at least this many steps; each segment's KV cache
# holds the slots written so far plus its own, not the full prompt + max_new_tokens.
_MAX_SEGMENTS = 4
_MIN_SEGMENT_STEPS = 16


def decode_segments(n: int) -> list[tuple[int, int]]:
    """The decoding steps [start, end) of each segment of an n-step loop: (0, n) when n is short (also n = 0)."""
    size = max(_MIN_SEGMENT_STEPS, -(-n // _MAX_SEGMENTS))
    return [(t, min(t + size, n)) for t in range(0, max(n, 1), size)]


def generate(
    model: Transformer,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    cfg: SamplingConfig,
    stop_tokens: tuple[int, ...],
    pad_id: int = 0,
) -> SampleOutput:
    """Sample `cfg.max_new_tokens` tokens after left-padded `prompt` (B, P) with `prompt_mask` (B, P).

    Pure function of its inputs: call it under jit (see `Sampler`), never in a Python loop of its own.

    Token t is drawn from the logits of the forward pass of token t - 1; the last token needs no forward
    pass, so the loop forwards N - 1 tokens. Decoding is memory-bound, and every step reads the whole KV
    cache, so those N - 1 steps run in segments (`decode_segments`), each a `lax.scan` over a cache of P + its
    last step's slots, zero-extended between segments: P = 32, N = 64 reads 71 slots a step on average instead
    of 96. Each segment compiles its own loop body. Tokens do not depend on the segmentation: unwritten slots
    are masked out either way.
    """
    b, p = prompt.shape
    n = cfg.max_new_tokens
    if p + n > model.config.max_seq_len:
        raise ValueError(
            f"prompt length {p} + max_new_tokens {n} exceeds the model's max_seq_len {model.config.max_seq_len}"
        )
    segments = decode_segments(max(n - 1, 0))  # the steps that forward their token
    cache = KVCache.zeros(model.config, b, p + segments[0][1])
    kv_mask = jnp.concatenate(
        [prompt_mask.astype(jnp.int32), jnp.zeros((b, n), jnp.int32)], axis=1
    )  # (B, P+N); a segment's steps see its first P + end slots
    positions = positions_from_mask(prompt_mask)  # (B, P)
    hidden, cache = model(prompt, positions, kv_mask[:, : p + segments[0][1]], cache, 0)
    logits = model.next_token_logits(hidden[:, -1])  # (B, V)
    stops = jnp.asarray(stop_tokens, jnp.int32)

    def choose(logits, done, step_key):  # -> token (B,), live (B,), done (B,), outputs of the step
        token, logprob = _sample_token(logits, step_key, cfg)
        live = ~done
        token = jnp.where(live, token, pad_id)
        return token, live, done | jnp.isin(token, stops), (token, jnp.where(live, logprob, 0.0), live)

    def step(carry, xs):  # draw token t, then forward it for the logits of token t + 1
        logits, cache, kv_mask, pos, done = carry
        t, step_key = xs
        token, live, done, out = choose(logits, done, step_key)
        kv_mask = jax.lax.dynamic_update_slice(kv_mask, live.astype(jnp.int32)[:, None], (0, p + t))
        slots = cache.k[0].shape[2]  # this segment's cache length
        hidden, cache = model(token[:, None], pos[:, None], kv_mask[:, :slots], cache, p + t)
        new_logits = model.next_token_logits(hidden[:, 0])
        return (new_logits, cache, kv_mask, pos + 1, done), out

    carry = (logits, cache, kv_mask, positions[:, -1] + 1, jnp.zeros((b,), bool))
    keys, outputs = jax.random.split(key, n), []
    for start, end in segments:
        if start > 0:  # extend the cache with zero slots up to this segment's last step
            logits, cache, *rest = carry
            cache = jax.tree.map(lambda x, k=end - start: jnp.pad(x, ((0, 0), (0, 0), (0, k), (0, 0))), cache)
            carry = (logits, cache, *rest)
        carry, out = jax.lax.scan(step, carry, (jnp.arange(start, end), keys[start:end]))
        outputs.append(out)
    if n > 0:  # the last token: drawn, never forwarded
        logits, *_, done = carry
        outputs.append(jax.tree.map(lambda x: x[None], choose(logits, done, keys[n - 1])[3]))
    tokens, logprobs, live = (jnp.concatenate(x, axis=0) for x in zip(*outputs, strict=True))  # each (N, B)
    return SampleOutput(tokens.T, logprobs.T, live.T.astype(jnp.int32))


def left_pad(seqs: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to `length`: tokens (B, length) int32 and mask (B, length) int32."""
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"prompt {i} has {len(s)} tokens, longer than the bucket of {length}")
        if s:
            tokens[i, length - len(s) :] = s
            mask[i, length - len(s) :] = 1
    return tokens, mask


def _bucket(n: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


class Sampler:
    """Generation for a model: one compiled program per (batch bucket, prompt bucket).

    `sample` pads the batch and prompt length up to the next bucket, so arbitrary prompt lists reuse a
    bounded set of programs; `num_compiled` reports how many exist.
    """

    def __init__(
        self,
        model: Transformer,
        cfg: SamplingConfig,
        stop_tokens: tuple[int, ...],
        pad_id: int,
        batch_buckets: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256),
        prompt_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048),
    ):
        self.graphdef, self.state = nnx.split(model)
        self.max_seq_len = model.config.max_seq_len
        self.cfg = cfg
        self.pad_id = pad_id
        self.batch_buckets, self.prompt_buckets = batch_buckets, prompt_buckets

        @jax.jit
        def run(state, prompt, prompt_mask, key):
            m = nnx.merge(self.graphdef, state)
            return generate(m, prompt, prompt_mask, key, cfg, tuple(stop_tokens), pad_id)

        self._run = run

    def update(self, model: Transformer) -> None:
        """Use the model's current weights (e.g. after a training step); compiled programs are kept."""
        self.state = nnx.state(model)

    @property
    def num_compiled(self) -> int:
        return self._run._cache_size()

    def sample(self, prompts: list[list[int]], key: jax.Array) -> SampleOutput:
        """Generate for token lists of any lengths; returns arrays for exactly `len(prompts)` rows."""
        n = len(prompts)
        longest = max(len(p) for p in prompts)
        if longest + self.cfg.max_new_tokens > self.max_seq_len:
            raise ValueError(
                f"a prompt has {longest} tokens; with max_new_tokens={self.cfg.max_new_tokens} that exceeds the "
                f"model's max_seq_len {self.max_seq_len}"
            )
        length = min(_bucket(longest, self.prompt_buckets), self.max_seq_len - self.cfg.max_new_tokens)
        rows = _bucket(n, self.batch_buckets) if n <= self.batch_buckets[-1] else n
        padded = list(prompts) + [[self.pad_id]] * (rows - n)
        tokens, mask = left_pad(padded, length, self.pad_id)
        out = self._run(self.state, jnp.asarray(tokens), jnp.asarray(mask), key)
        return SampleOutput(*(x[:n] for x in out))
