"""Model structure: parameter counts, heads, left padding, logical axis names, config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, Transformer, positions_from_mask
from oversight.models import transformer as T

CONFIGS = [
    ModelConfig(family="gpt2", vocab_size=50, d_model=32, n_layers=2, n_heads=4, scalar_heads=["reward"]),
    ModelConfig(
        family="llama",
        vocab_size=50,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=48,
        tie_embeddings=False,
        attention_bias=True,
        scalar_heads=["value", "reward"],
    ),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_parameter_count_matches_the_formula(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == cfg.num_params()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_every_parameter_has_one_logical_name_per_dimension(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_left_padding_leaves_real_positions_unchanged(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    seq = jnp.asarray([[3, 7, 9, 11, 4]])
    alone, _ = model(seq, positions_from_mask(jnp.ones_like(seq)), jnp.ones_like(seq))
    padded = jnp.concatenate([jnp.zeros((1, 3), seq.dtype), seq], axis=1)
    mask = (padded != 0).astype(jnp.int32).at[0, 3].set(1)
    hidden, _ = model(padded, positions_from_mask(mask), mask)
    np.testing.assert_allclose(hidden[0, 3:], alone[0], atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(hidden)))  # fully masked pad rows stay finite
    for head in cfg.scalar_heads:
        assert model.scalar(hidden, head).shape == (1, 8)


def test_unknown_scalar_head_is_a_clear_error():
    model = Transformer(CONFIGS[0], rngs=nnx.Rngs(0))
    hidden = jnp.zeros((1, 2, 32))
    with pytest.raises(KeyError, match="no scalar head 'value'; configured heads: \\['reward'\\]"):
        model.scalar(hidden, "value")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(family="bert"), "model.family='bert'"),
        (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "not a multiple of n_kv_heads"),
    ],
)
def test_invalid_model_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_tied_lm_head_gradients_equal_the_plain_product():
    """The tied head as `dense(h, embed.T, float32)`: its gradients equal autodiff's of the plain product."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    embed = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    # a loss that weighs every logit differently
    weights = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)

    def loss(head):
        return lambda h, e: (jnp.tanh(head(h, e)) * weights).sum()

    def tied(h, e):
        return T.dense(h, e.T, jnp.float32)

    plain = jax.grad(loss(lambda h, e: jnp.einsum("btd,dv->btv", h, e.T)), argnums=(0, 1))(hidden, embed)
    ours = jax.jit(jax.grad(loss(tied), argnums=(0, 1)))(hidden, embed)
    for p, t in zip(plain, ours, strict=True):
        assert t.shape == p.shape and t.dtype == p.dtype
        np.testing.assert_allclose(t, p, rtol=1e-5, atol=1e-6)
    # bfloat16 parameters: float32 logits, gradients back in the parameters' dtype
    bf = jax.grad(loss(tied), argnums=(0, 1))(hidden.astype(jnp.bfloat16), embed.astype(jnp.bfloat16))
    assert tied(hidden.astype(jnp.bfloat16), embed.astype(jnp.bfloat16)).dtype == jnp.float32
    assert bf[0].dtype == bf[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf[1], np.float32), ours[1], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("lead", [(7,), (2, 5)])
def test_dense_value_and_gradients_equal_the_plain_product(lead):
    from oversight.models.transformer import dense

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(*lead, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(*lead, 6)), jnp.float32)  # every output weighed differently

    def loss(product):
        return lambda x, w: (jnp.tanh(product(x, w)) * weights).sum()

    np.testing.assert_allclose(dense(x, w), x @ w, rtol=1e-6, atol=1e-6)
    plain = jax.grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
    ours = jax.jit(jax.grad(loss(dense), argnums=(0, 1)))(x, w)
    for p, o in zip(plain, ours, strict=True):
        assert o.shape == p.shape and o.dtype == p.dtype
        np.testing.assert_allclose(o, p, rtol=1e-5, atol=1e-6)
    bf = jax.grad(loss(dense), argnums=(0, 1))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert bf[0].dtype == bf[1].dtype == jnp.bfloat16
    for b, o in zip(bf, ours, strict=True):
        np.testing.assert_allclose(np.asarray(b, np.float32), o, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    "cfg",
    [*CONFIGS, dataclasses.replace(CONFIGS[0], dtype="bfloat16")],
    ids=["gpt2-tied", "llama-untied", "gpt2-tied-bf16"],
)
def test_next_token_logits_equal_the_lm_head_at_that_position(cfg):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(3, cfg.d_model)), cfg.dtype)  # (B, D)
    expected = model.logits(hidden[:, None])[:, 0]  # (B, V)
    got = jax.jit(lambda m, h: m.next_token_logits(h))(model, hidden)
    assert got.shape == (3, cfg.vocab_size) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_materialized_block_grads_change_no_gradient_and_survive_compilation():
    cfg = CONFIGS[0]
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 7)), jnp.int32)
    mask = jnp.ones_like(tokens)

    def loss(model, materialize):
        hidden, _ = model(tokens, positions_from_mask(mask), mask, materialize_block_grads=materialize)
        return jnp.sum(jnp.tanh(model.logits(hidden))) + jnp.sum(model.scalar(hidden, "reward") ** 2)

    grad_fn = jax.jit(nnx.grad(loss), static_argnums=1)
    plain, materialized = grad_fn(model, False), grad_fn(model, True)
    for p, m in zip(jax.tree.leaves(plain), jax.tree.leaves(materialized), strict=True):
        np.testing.assert_allclose(m, p, rtol=1e-5, atol=1e-6)  # summation order may differ
    # one conditional per block boundary is left after XLA's simplification (what keeps the sum unfused)
    compiled = grad_fn.lower(model, True).compile().as_text()
    assert compiled.count("conditional(") == cfg.n_layers


def test_causal_blocks_cover_the_rows_in_at_most_four_blocks_of_at_least_64():
    assert T.causal_blocks(96) == [(0, 96)]  # too short to split
    assert T.causal_blocks(128) == [(0, 64), (64, 128)]
    assert T.causal_blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    for t in (1, 64, 127, 200, 1000, 4096):
        blocks = T.causal_blocks(t)
        assert blocks[0][0] == 0 and blocks[-1][1] == t and len(blocks) <= 4
        assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:], strict=True))
        assert all(end - start >= min(t, 64) for start, end in blocks)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_attention_in_causal_blocks_gives_the_full_attentions_outputs_and_gradients(cfg, monkeypatch):
    """Blocks of 3 query rows (each attending to the keys up to its last row) against one block, on a
    left-padded batch: the same hidden states at real positions and the same parameter gradients."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 11)), jnp.int32)
    mask = jnp.ones_like(tokens).at[1, :4].set(0)  # row 1 left-padded by 4

    def run(model):
        def loss(model):
            hidden, _ = model(tokens, positions_from_mask(mask), mask)
            real = mask[..., None].astype(hidden.dtype)
            return jnp.sum(jnp.tanh(model.logits(hidden)) * real), hidden * real

        return jax.jit(nnx.value_and_grad(loss, has_aux=True))(model)

    (_, one_hidden), one_grads = run(model)
    monkeypatch.setattr(T, "_MIN_CAUSAL_BLOCK", 3)
    assert len(T.causal_blocks(11)) == 3
    (_, blocked_hidden), blocked_grads = run(model)  # a new jit: traced again with the blocks
    np.testing.assert_allclose(blocked_hidden, one_hidden, rtol=1e-5, atol=1e-5)
    for b, o in zip(jax.tree.leaves(blocked_grads), jax.tree.leaves(one_grads), strict=True):
        np.testing.assert_allclose(b, o, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "cfg", [*CONFIGS, dataclasses.replace(CONFIGS[1], dtype="bfloat16")], ids=["gpt2", "llama", "llama-bf16"]
)
def test_model_gradients_with_dense_equal_those_with_the_plain_product(cfg, monkeypatch):
    """Every weight product through `dense` (its hand-written backward; the trunk and the LM head, tied for
    GPT-2, untied for Llama) against the same model with a plain product that autodiff differentiates: the same
    gradient for every parameter, on a left-padded batch."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 11)), jnp.int32)
    mask = jnp.ones_like(tokens).at[1, :4].set(0)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, cfg.vocab_size)), jnp.float32)

    def loss(model):
        hidden, _ = model(tokens, positions_from_mask(mask), mask)
        return jnp.sum(jnp.tanh(model.logits(hidden)) * weights)

    ours = jax.jit(nnx.grad(loss))(model)

    def plain_product(x, w, out_dtype=None):
        return jnp.einsum("...i,io->...o", x, w, preferred_element_type=out_dtype)

    monkeypatch.setattr(T, "dense", plain_product)
    plain = jax.jit(nnx.grad(loss))(model)  # a new jit: traced again with the plain product
    tol = 2e-2 if cfg.dtype == "bfloat16" else 1e-5  # relative to each gradient's largest entry
    for o, p in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        assert o.dtype == p.dtype
        o, p = np.asarray(o, np.float32), np.asarray(p, np.float32)
        np.testing.assert_allclose(o, p, rtol=0, atol=tol * np.abs(p).max() + 1e-7)


def test_target_logprobs_value_and_gradient_match_autodiff_of_log_softmax():
    # The hand-written VJP against autodiff of a different formulation (log_softmax, then a gather), with a
    # cotangent that differs per position, as a masked and weighted loss gives it.
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 11))  # (B, T, V)
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    weights = jax.random.uniform(jax.random.key(2), (2, 5))

    def reference(logits):
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]

    np.testing.assert_allclose(T.target_logprobs(logits, targets), reference(logits), rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda x: (T.target_logprobs(x, targets) * weights).sum()))(logits)
    expected = jax.grad(lambda x: (reference(x) * weights).sum())(logits)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    # Each row's gradient sums to 0 (a softmax), and is w (1 - p) at the target.
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)
    at_target = jnp.take_along_axis(grad, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(at_target, weights * (1 - jnp.exp(reference(logits))), rtol=1e-5, atol=1e-6)
