"""The KV-cache sampler against recomputing the full forward pass, and its sampling options."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, Transformer, positions_from_mask
from oversight.sampling import Sampler, SamplingConfig, left_pad

G = importlib.import_module(
    "oversight.sampling.generate"
)  # the module (the package exports a function of that name)

FAMILIES = {
    "gpt2": ModelConfig(family="gpt2", vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
    "llama": ModelConfig(
        family="llama",
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        max_seq_len=64,
        tie_embeddings=False,
        rope_theta=500.0,
    ),
}
PROMPTS = [[1, 5, 6, 7, 9], [1, 9], [1, 3, 4, 5, 6, 7, 8, 10, 11], [1, 20, 21]]


def _model(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    # Larger weights than the 0.02 init so that greedy choices are far from ties and actually vary.
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), state))
    return model


@nnx.jit(static_argnames="temperature")
def _full_forward(model, tokens, mask, temperature=1.0):
    """Log-probs (B, T, V) from one plain forward pass over right-padded rows (no cache)."""
    hidden, _ = model(tokens, positions_from_mask(mask), mask)
    return jax.nn.log_softmax(model.logits(hidden) / temperature, axis=-1)


def _full_forward_logprobs(model, seq, temperature=1.0):
    """Log-probs (len(seq), V) of one sequence, padded to the model's context so one program serves all."""
    length = model.config.max_seq_len
    tokens = np.zeros((1, length), np.int32)
    tokens[0, : len(seq)] = seq
    mask = (np.arange(length) < len(seq)).astype(np.int32)[None]
    return _full_forward(model, jnp.asarray(tokens), jnp.asarray(mask), temperature)[0, : len(seq)]


@pytest.fixture
def short_segments(monkeypatch):
    """Decode in segments of 4 steps, so that a 12-token test (11 forwarded) crosses two segment boundaries."""
    monkeypatch.setattr(G, "_MIN_SEGMENT_STEPS", 4)
    assert G.decode_segments(11) == [(0, 4), (4, 8), (8, 11)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_kv_cache_decoding_equals_full_recompute(family, short_segments):
    model = _model(FAMILIES[family])
    n = 12
    out = Sampler(
        model, SamplingConfig(max_new_tokens=n, temperature=0.0), stop_tokens=(63,), pad_id=0
    ).sample(PROMPTS, jax.random.key(0))
    for i, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for t in range(n):
            logp = _full_forward_logprobs(model, seq)[-1]
            token = int(jnp.argmax(logp))
            assert int(out.tokens[i, t]) == token, f"row {i} step {t}"
            np.testing.assert_allclose(float(out.logprobs[i, t]), float(logp[token]), atol=1e-5)
            seq.append(token)
    assert len({tuple(np.asarray(r)) for r in out.tokens}) > 1, "degenerate model: all rows identical"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampled_logprobs_equal_fresh_forward_pass(family, short_segments):
    model = _model(FAMILIES[family])
    temperature = 0.7
    out = Sampler(
        model, SamplingConfig(max_new_tokens=10, temperature=temperature), stop_tokens=(), pad_id=0
    ).sample(PROMPTS, jax.random.key(3))
    for i, prompt in enumerate(PROMPTS):
        gen = [int(t) for t in out.tokens[i]]
        logp = _full_forward_logprobs(model, prompt + gen, temperature)
        expected = [float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(gen)]
        np.testing.assert_allclose(np.asarray(out.logprobs[i]), expected, atol=1e-5)


def test_decode_segments_cover_the_loop_in_at_most_four_growing_pieces():
    assert G.decode_segments(12) == [(0, 12)]  # short loops: one segment
    assert G.decode_segments(0) == [(0, 0)]
    assert G.decode_segments(64) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    for n in (1, 16, 17, 33, 100, 255, 1000):
        segments = G.decode_segments(n)
        assert segments[0][0] == 0 and segments[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(segments[:-1], segments[1:], strict=True))  # contiguous
        assert len(segments) <= 4 and all(end > start for start, end in segments)
        assert all(end - start >= 16 for start, end in segments[:-1])


def test_segmented_decoding_samples_what_one_segment_samples(monkeypatch):
    """The segments only shorten the cache each step reads: same key, same tokens, same log-probs, also
    across a stop token."""
    model = _model(FAMILIES["llama"])
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0)
    one = Sampler(model, cfg, stop_tokens=(7,), pad_id=0).sample(PROMPTS, jax.random.key(5))
    monkeypatch.setattr(G, "_MIN_SEGMENT_STEPS", 3)
    assert len(G.decode_segments(11)) == 4  # 12 tokens, 11 forwarded
    split = Sampler(model, cfg, stop_tokens=(7,), pad_id=0).sample(PROMPTS, jax.random.key(5))
    np.testing.assert_array_equal(one.tokens, split.tokens)
    np.testing.assert_array_equal(one.mask, split.mask)
    np.testing.assert_allclose(one.logprobs, split.logprobs, atol=1e-5)
    assert int(one.mask.sum()) < one.mask.size, "no row stopped: the stop path is untested"


def test_one_token_is_drawn_from_the_prompts_logits_and_zero_tokens_give_empty_outputs():
    """N = 1: the loop forwards nothing, the one token comes from the prefill's logits; N = 0: nothing."""
    model = _model(FAMILIES["gpt2"])
    one = Sampler(model, SamplingConfig(max_new_tokens=1, temperature=0.0), stop_tokens=(), pad_id=0)
    out = one.sample(PROMPTS, jax.random.key(0))
    assert out.tokens.shape == (len(PROMPTS), 1)
    for i, prompt in enumerate(PROMPTS):
        logp = _full_forward_logprobs(model, prompt)[-1]
        assert int(out.tokens[i, 0]) == int(jnp.argmax(logp))
        np.testing.assert_allclose(float(out.logprobs[i, 0]), float(jnp.max(logp)), atol=1e-5)
    none = Sampler(model, SamplingConfig(max_new_tokens=0, temperature=1.0), stop_tokens=(), pad_id=0)
    empty = none.sample(PROMPTS, jax.random.key(0))
    assert empty.tokens.shape == empty.logprobs.shape == empty.mask.shape == (len(PROMPTS), 0)


def test_left_padding_does_not_change_a_rows_output():
    model = _model(FAMILIES["llama"])
    sampler = Sampler(model, SamplingConfig(max_new_tokens=8, temperature=0.0), stop_tokens=(), pad_id=0)
    alone = sampler.sample([PROMPTS[1]], jax.random.key(0))
    batched = sampler.sample(PROMPTS, jax.random.key(0))
    np.testing.assert_array_equal(alone.tokens[0], batched.tokens[1])
    np.testing.assert_allclose(alone.logprobs[0], batched.logprobs[1], atol=1e-5)


def test_stop_token_ends_a_row_and_masks_the_rest():
    model = _model(FAMILIES["gpt2"])
    greedy = Sampler(model, SamplingConfig(max_new_tokens=12, temperature=0.0), stop_tokens=(), pad_id=0)
    free = greedy.sample(PROMPTS, jax.random.key(0))
    stop = int(free.tokens[0, 3])  # row 0 produces this token at step 3 (or earlier)
    first = int(np.argmax(np.asarray(free.tokens[0]) == stop))
    out = Sampler(
        model, SamplingConfig(max_new_tokens=12, temperature=0.0), stop_tokens=(stop,), pad_id=0
    ).sample(PROMPTS, jax.random.key(0))
    np.testing.assert_array_equal(out.mask[0], [1] * (first + 1) + [0] * (11 - first))
    assert int(out.tokens[0, first]) == stop
    assert np.all(np.asarray(out.tokens[0, first + 1 :]) == 0)
    assert np.all(np.asarray(out.logprobs[0, first + 1 :]) == 0.0)


def test_top_k_one_is_greedy_and_top_p_restricts_support():
    model = _model(FAMILIES["gpt2"])
    greedy = Sampler(model, SamplingConfig(max_new_tokens=6, temperature=0.0), stop_tokens=(), pad_id=0)
    top1 = Sampler(
        model, SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=1), stop_tokens=(), pad_id=0
    )
    np.testing.assert_array_equal(
        greedy.sample(PROMPTS, jax.random.key(0)).tokens, top1.sample(PROMPTS, jax.random.key(5)).tokens
    )
    # With a tiny nucleus only the most likely token survives: again greedy.
    nucleus = Sampler(
        model, SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6), stop_tokens=(), pad_id=0
    )
    np.testing.assert_array_equal(
        greedy.sample(PROMPTS, jax.random.key(0)).tokens, nucleus.sample(PROMPTS, jax.random.key(9)).tokens
    )


def test_prompt_buckets_bound_the_number_of_compiled_programs():
    model = _model(FAMILIES["gpt2"])
    sampler = Sampler(model, SamplingConfig(max_new_tokens=4, temperature=1.0), stop_tokens=(), pad_id=0)
    rng = np.random.default_rng(0)
    for i in range(12):  # prompt lengths 1..15 and batch sizes 2..8 all fall in one bucket each
        prompts = [list(rng.integers(1, 60, size=rng.integers(1, 16))) for _ in range(rng.integers(2, 9))]
        sampler.sample(prompts, jax.random.key(i))
    assert sampler.num_compiled == 1


def test_prompt_longer_than_context_is_a_clear_error():
    model = _model(FAMILIES["gpt2"])
    sampler = Sampler(model, SamplingConfig(max_new_tokens=8), stop_tokens=(), pad_id=0)
    with pytest.raises(ValueError, match="max_seq_len 64"):
        sampler.sample([[1] * 60], jax.random.key(0))


def test_left_pad_layout():
    tokens, mask = left_pad([[5, 6], [7]], 4, pad_id=0)
    np.testing.assert_array_equal(tokens, [[0, 0, 5, 6], [0, 0, 0, 7]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 0, 1]])


def test_two_level_draw_matches_the_softmax_distribution():
    from oversight.sampling.generate import _draw

    rng = np.random.default_rng(0)
    v, draws = 150, 40_000  # a vocabulary that is not a whole number of blocks
    logits = rng.normal(0, 2, v).astype(np.float32)
    logits[[3, 70, 149]] = [-np.inf, 4.0, 3.5]  # a filtered token, and mass in the middle and the last block
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    tokens = np.asarray(_draw(jnp.tile(jnp.asarray(logits), (draws, 1)), jax.random.key(1)))
    freq = np.bincount(tokens, minlength=v) / draws
    assert freq[3] == 0 and tokens.min() >= 0 and tokens.max() < v
    sigma = np.sqrt(probs * (1 - probs) / draws)
    assert np.all(np.abs(freq - probs) <= 5 * sigma + 1e-4), np.max(np.abs(freq - probs) / (sigma + 1e-12))
    # a single surviving token is always drawn, wherever it sits
    for only in (0, 64, 149):
        one = np.full((4, v), -np.inf, np.float32)
        one[:, only] = 0.0
        assert np.asarray(_draw(jnp.asarray(one), jax.random.key(only))).tolist() == [only] * 4


def test_argmax_is_jnp_argmax_including_ties():
    from oversight.sampling.generate import _argmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 300)).astype(np.float32)
    logits[:8, [5, 17, 299]] = 10.0  # ties: the first index wins, as in jnp.argmax
    logits[8, -1] = np.inf
    logits[9] = -np.inf  # all filtered: index 0
    got = np.asarray(jax.jit(_argmax)(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert got[:8].tolist() == [5] * 8 and got[8] == 299 and got[9] == 0
