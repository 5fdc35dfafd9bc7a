"""The kernel switch: the CPU kernels (custom gradients, grouped and blocked attention) against the plain path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import KVCache, ModelConfig, Transformer, kernels, positions_from_mask

GPT2 = ModelConfig(family="gpt2", vocab_size=50, d_model=32, n_layers=2, n_heads=4, scalar_heads=["value"])
LLAMA = ModelConfig(
    family="llama",
    vocab_size=50,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    tie_embeddings=False,
    attention_bias=True,
    scalar_heads=["value"],
)


def test_the_switch_follows_the_platform_and_the_override_picks_a_path():
    assert kernels.cpu_kernels() == (jax.default_backend() == "cpu")
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))

    def hand_written_backward():  # the same function each time: JAX's trace cache must not answer
        return "custom_vjp_call" in str(jax.make_jaxpr(kernels.matmul)(x, w))

    with kernels.use_cpu_kernels(True):
        assert kernels.cpu_kernels() and hand_written_backward()
        with kernels.use_cpu_kernels(False):
            assert not kernels.cpu_kernels() and not hand_written_backward()
        assert kernels.cpu_kernels() and hand_written_backward()  # restored on exit
    assert kernels.cpu_kernels() == (jax.default_backend() == "cpu")


def weighted(product, weights):
    """A loss that weighs every output differently, so each gradient entry is tested."""
    return lambda *args: (jnp.tanh(product(*args)) * weights).sum()


@pytest.mark.parametrize("lead", [(7,), (2, 5)])
def test_cpu_matmul_value_and_gradients_equal_the_plain_product(lead):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(*lead, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    loss = weighted(kernels.matmul, jnp.asarray(rng.normal(size=(*lead, 6)), jnp.float32))

    with kernels.use_cpu_kernels(True):
        np.testing.assert_allclose(kernels.matmul(x, w), x @ w, rtol=1e-6, atol=1e-6)
        ours = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
        bf = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    with kernels.use_cpu_kernels(False):
        plain = jax.grad(loss, argnums=(0, 1))(x, w)
    for p, o in zip(plain, ours, strict=True):
        assert o.shape == p.shape and o.dtype == p.dtype
        np.testing.assert_allclose(o, p, rtol=1e-5, atol=1e-6)
    assert bf[0].dtype == bf[1].dtype == jnp.bfloat16  # gradients in the inputs' dtypes
    for b, o in zip(bf, ours, strict=True):
        np.testing.assert_allclose(np.asarray(b, np.float32), o, rtol=0.1, atol=0.1)


def test_cpu_tied_lm_head_gradients_equal_the_plain_product():
    """The tied head as `matmul(h, embed.T, float32)`: its gradients equal autodiff's of the plain product."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    embed = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    loss = weighted(lambda h, e: kernels.matmul(h, e.T, jnp.float32), rng.normal(size=(2, 5, 11)))

    with kernels.use_cpu_kernels(False):
        plain = jax.grad(loss, argnums=(0, 1))(hidden, embed)
    with kernels.use_cpu_kernels(True):
        ours = jax.jit(jax.grad(loss, argnums=(0, 1)))(hidden, embed)
        bf16 = hidden.astype(jnp.bfloat16), embed.astype(jnp.bfloat16)
        assert kernels.matmul(bf16[0], bf16[1].T, jnp.float32).dtype == jnp.float32
        bf = jax.grad(loss, argnums=(0, 1))(*bf16)
    for p, t in zip(plain, ours, strict=True):
        assert t.shape == p.shape and t.dtype == p.dtype
        np.testing.assert_allclose(t, p, rtol=1e-5, atol=1e-6)
    assert bf[0].dtype == bf[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf[1], np.float32), ours[1], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("cpu", [True, False], ids=["cpu", "plain"])
def test_target_logprobs_value_and_gradient_match_autodiff_of_log_softmax(cpu):
    # Against autodiff of a different formulation (log_softmax, then a gather), with a cotangent that differs
    # per position, as a masked and weighted loss gives it.
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 11))  # (B, T, V)
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    weights = jax.random.uniform(jax.random.key(2), (2, 5))

    def reference(logits):
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]

    with kernels.use_cpu_kernels(cpu):
        np.testing.assert_allclose(
            kernels.target_logprobs(logits, targets), reference(logits), rtol=1e-6, atol=1e-6
        )
        grad = jax.jit(jax.grad(lambda x: (kernels.target_logprobs(x, targets) * weights).sum()))(logits)
    expected = jax.grad(lambda x: (reference(x) * weights).sum())(logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    # Each row's gradient sums to 0 (a softmax), and is w (1 - p) at the target.
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)
    at_target = jnp.take_along_axis(grad, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(at_target, weights * (1 - jnp.exp(reference(logits))), rtol=1e-5, atol=1e-6)


def test_causal_blocks_cover_the_rows_in_at_most_four_blocks_of_at_least_64():
    assert kernels.causal_blocks(96) == [(0, 96)]  # too short to split
    assert kernels.causal_blocks(128) == [(0, 64), (64, 128)]
    assert kernels.causal_blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    for t in (1, 64, 127, 200, 1000, 4096):
        blocks = kernels.causal_blocks(t)
        assert blocks[0][0] == 0 and blocks[-1][1] == t and len(blocks) <= 4
        assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:], strict=True))
        assert all(end - start >= min(t, 64) for start, end in blocks)


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal-blocks", "cache"])
def test_cpu_attention_equals_jax_attention_in_values_and_gradients(n_kv, causal, monkeypatch):
    """Grouped heads and, without a cache, blocks of 3 query rows against `jax.nn.dot_product_attention`, on a
    left-padded batch (row 1's first 4 slots hidden). Queries that see no key (padding) are left out: their
    uniform attention spans their block's keys, not all S."""
    monkeypatch.setattr(kernels, "_MIN_CAUSAL_BLOCK", 3)
    b, h, t, e = 2, 4, 11, 8
    s = t if causal else 16  # with a cache: T queries at slots [5, 16) of S
    assert len(kernels.causal_blocks(t)) == 3
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(b, h, t, e)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, n_kv, s, e)), jnp.float32) for _ in range(2))
    slots = jnp.arange(s)[None, :] <= (s - t + jnp.arange(t))[:, None]  # (T, S) causal
    mask = slots[None] & (jnp.arange(s) >= jnp.asarray([[0], [4]]))[:, None, :]  # (B, T, S)
    sees = mask.any(-1)[:, None, :, None]  # (B, 1, T, 1)
    assert bool(sees.all()) != causal  # without a cache, row 1's first 4 queries see nothing
    weights = rng.normal(size=(b, h, t, e)) * sees
    loss = weighted(lambda q, k, v: kernels.attention(q, k, v, mask, causal), weights)

    def value_and_grads(cpu):
        with kernels.use_cpu_kernels(cpu):
            out = jax.jit(kernels.attention, static_argnums=4)(q, k, v, mask, causal)
            return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    (ours, ours_grads), (plain, plain_grads) = value_and_grads(True), value_and_grads(False)
    assert ours.shape == plain.shape == (b, h, t, e)
    np.testing.assert_allclose(ours * sees, plain * sees, rtol=1e-5, atol=1e-5)
    for o, p in zip(ours_grads, plain_grads, strict=True):
        np.testing.assert_allclose(o, p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "cfg", [GPT2, LLAMA, dataclasses.replace(LLAMA, dtype="bfloat16")], ids=["gpt2", "llama", "llama-bf16"]
)
def test_model_on_cpu_kernels_equals_the_plain_path_in_logits_and_gradients(cfg, monkeypatch):
    """The whole model, every CPU kernel in use (products, blocks of 3 query rows, materialized block
    gradients, target log-probs), against the plain path: the same logits, next-token logits from a cache, and
    gradient for every parameter, on a left-padded batch."""
    monkeypatch.setattr(kernels, "_MIN_CAUSAL_BLOCK", 3)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 11)), jnp.int32)
    mask = jnp.ones_like(tokens).at[1, :4].set(0)
    positions = positions_from_mask(mask)

    def loss(model):
        hidden, _ = model(tokens, positions, mask, materialize_block_grads=True)
        logits = model.logits(hidden)  # (B, T, V)
        logp = kernels.target_logprobs(logits[:, :-1], tokens[:, 1:]) * mask[:, :-1]  # from real positions
        return -logp.sum() + jnp.sum(model.scalar(hidden, "value") ** 2 * mask), logits

    def decode(model):  # prefill 10 tokens into a cache of 12 slots, then one decoding step
        kv_mask = jnp.pad(mask, ((0, 0), (0, 1)))  # (B, 12)
        _, cache = model(tokens[:, :10], positions[:, :10], kv_mask, KVCache.zeros(cfg, 2, 12), 0)
        hidden, _ = model(tokens[:, 10:], positions[:, 10:], kv_mask, cache, 10)
        return model.next_token_logits(hidden[:, 0])  # (B, V)

    def run(cpu):
        with kernels.use_cpu_kernels(cpu):  # new jits: traced with this path
            (_, logits), grads = jax.jit(nnx.value_and_grad(loss, has_aux=True))(model)
            return logits, jax.jit(decode)(model), grads

    ours, plain = run(True), run(False)
    tol = 2e-2 if cfg.dtype == "bfloat16" else 1e-5  # relative to each array's largest entry
    real = np.asarray(mask, bool)
    for o, p in [(ours[0][real], plain[0][real]), (ours[1], plain[1])]:
        np.testing.assert_allclose(o, p, rtol=0, atol=tol * np.abs(p).max())
    for o, p in zip(jax.tree.leaves(ours[2]), jax.tree.leaves(plain[2]), strict=True):
        assert o.dtype == p.dtype
        o, p = np.asarray(o, np.float32), np.asarray(p, np.float32)
        np.testing.assert_allclose(o, p, rtol=0, atol=tol * np.abs(p).max() + 1e-7)


def test_materialized_block_grads_keep_one_conditional_per_block_only_with_cpu_kernels():
    model = Transformer(GPT2, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, GPT2.vocab_size, (3, 7)), jnp.int32)
    mask = jnp.ones_like(tokens)

    def loss(model):
        hidden, _ = model(tokens, positions_from_mask(mask), mask, materialize_block_grads=True)
        return jnp.sum(jnp.tanh(model.logits(hidden)))

    for cpu, conditionals in [(True, GPT2.n_layers), (False, 0)]:
        with kernels.use_cpu_kernels(cpu):
            compiled = jax.jit(nnx.grad(loss)).lower(model).compile().as_text()
        # what keeps the gradient sum unfused survives XLA's simplification, one per block boundary
        assert compiled.count("conditional(") == conditionals


def test_the_run_configs_kernel_path_forces_one_path_and_auto_leaves_the_platforms():
    platform = kernels.cpu_kernels()
    with kernels.kernel_path("plain"):
        assert not kernels.cpu_kernels()
    with kernels.kernel_path("cpu"):
        assert kernels.cpu_kernels()
    with kernels.kernel_path("auto"):
        assert kernels.cpu_kernels() == platform
    assert kernels.cpu_kernels() == platform
    with pytest.raises(ValueError, match="kernels='fast'"):
        kernels.kernel_path("fast")
