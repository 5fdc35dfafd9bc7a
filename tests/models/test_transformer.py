"""Model structure: parameter counts, heads, left padding, logical axis names, config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, Transformer, positions_from_mask

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
