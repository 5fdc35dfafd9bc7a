"""A sharded SFT step equals the single-device step, and parameters really are sharded."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from oversight.models import ModelConfig
from oversight.parallel import MeshConfig, logical_to_spec, make_mesh, shard_batch
from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
from oversight.training.sft import sft_loss

RULES = MeshConfig().rules
MODELS = {
    "gpt2": ModelConfig(family="gpt2", vocab_size=128, d_model=64, n_layers=1, n_heads=8, max_seq_len=32),
    "llama": ModelConfig(
        family="llama",
        vocab_size=128,
        d_model=64,
        n_layers=1,
        n_heads=8,
        n_kv_heads=4,
        d_ff=128,
        max_seq_len=32,
        tie_embeddings=False,
    ),
}
# Every layout for GPT-2; the Llama family (GQA, untied head) on the layouts that split heads.
CASES = [
    ("gpt2", (8, 1, 1)),
    ("gpt2", (2, 4, 1)),
    ("gpt2", (2, 2, 2)),
    ("gpt2", (1, 1, 8)),
    ("gpt2", (1, 8, 1)),
    ("llama", (2, 2, 2)),
    ("llama", (1, 1, 8)),
]


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 128, size=(8, 32)).astype(np.int32)
    lengths = rng.integers(12, 33, size=8)
    mask = (np.arange(32)[None] < lengths[:, None]).astype(np.int32)
    loss_mask = mask * (np.arange(32)[None] >= 6)
    return {"tokens": tokens * mask, "mask": mask, "loss_mask": loss_mask.astype(np.int32)}


def _one_step(model_cfg, mesh):
    # AdamW at a full learning rate from the first step, with eps 1e-3: Adam's update g / (sqrt(v) + eps)
    # turns float rounding in a gradient near 0 (below the default eps of 1e-8) into a step of the size of the
    # learning rate, whatever the mesh; with eps 1e-3 an update moves at most lr / eps times a gradient's error.
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-3))
    graphdef, state, shardings = init_train_state(model_cfg, tx, seed=0, mesh=mesh, rules=RULES)
    step = make_train_step(graphdef, sft_loss, shardings, mesh, RULES)
    before = jax.device_get(state)  # the step donates its input
    state, metrics = step(state, shard_batch(_batch(), mesh, RULES))
    return state, metrics, before


@pytest.fixture(scope="module")
def reference():
    """The single-device step per family, computed once."""
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    out = {}
    for family, cfg in MODELS.items():
        state, metrics, before = _one_step(cfg, mesh)
        state = jax.device_get(state)
        # The step really moves the parameters, so the comparison below checks an update.
        leaves = zip(jax.tree.leaves(state), jax.tree.leaves(before), strict=True)
        moved = max(float(np.abs(a - b).max()) for a, b in leaves)
        assert moved > 1e-3, f"{family}: the reference step left the state where it was"
        out[family] = (state, float(metrics["loss"]))
    return out


@pytest.mark.parametrize(
    "family, layout", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c))
)
def test_sharded_step_equals_single_device_step(reference, family, layout):
    ref_state, ref_loss = reference[family]
    assert len(jax.devices()) == 8, "tests/conftest.py must force 8 host devices"
    mesh = make_mesh(MeshConfig(data=layout[0], fsdp=layout[1], tensor=layout[2]))
    state, metrics, _ = _one_step(MODELS[family], mesh)
    np.testing.assert_allclose(float(metrics["loss"]), ref_loss, rtol=0, atol=1e-5)
    got, want = jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(ref_state)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "layout, expected",
    [
        ((1, 1, 8), {"embed": P("tensor", None), "wq": P(None, "tensor", None), "w_in": P(None, "tensor")}),
        ((1, 8, 1), {"embed": P(None, "fsdp"), "wq": P("fsdp", None, None), "w_in": P("fsdp", None)}),
        (
            (2, 2, 2),
            {"embed": P("tensor", "fsdp"), "wq": P("fsdp", "tensor", None), "w_in": P("fsdp", "tensor")},
        ),
    ],
)
def test_parameters_and_optimizer_state_are_really_sharded(layout, expected):
    mesh = make_mesh(MeshConfig(data=layout[0], fsdp=layout[1], tensor=layout[2]))
    _, state, _ = init_train_state(
        MODELS["gpt2"], make_optimizer(TrainConfig()), seed=0, mesh=mesh, rules=RULES
    )
    model, optimizer = state[0], state[1]
    arrays = {
        "embed": model["embed"],
        "wq": model["blocks"][0]["attn"]["wq"],
        "w_in": model["blocks"][0]["mlp"]["w_in"],
    }
    for name, var in arrays.items():
        array = var.get_value()
        assert array.sharding.spec == expected[name], name
        shard = array.addressable_shards[0].data.shape
        assert np.prod(shard) < np.prod(array.shape), f"{name} is replicated: shard {shard} of {array.shape}"
    mu = optimizer["opt_state"][1][0]["mu"]["blocks"][0]["mlp"]["w_in"].get_value()
    assert mu.sharding.spec == expected["w_in"]


def test_logical_rules_leave_indivisible_dimensions_replicated():
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 2, 8), mesh, RULES) == P(
        "fsdp", None, None
    )
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 4, 8), mesh, RULES) == P(
        "fsdp", "tensor", None
    )
    # A mesh axis is used at most once per array.
    assert logical_to_spec(("mlp", "heads"), (8, 8), mesh, RULES) == P("tensor", None)
    assert logical_to_spec((None, "embed"), (5, 64), mesh, RULES) == P(None, "fsdp")


@pytest.mark.parametrize(
    "cfg, message",
    [
        (MeshConfig(data=-1, fsdp=-1), "at most one axis may be -1"),
        (MeshConfig(data=3, fsdp=1, tensor=1), "does not fit 8 devices|need 3 devices"),
        (MeshConfig(rules={"embed": ["model"]}), "unknown mesh axes"),
    ],
)
def test_bad_mesh_configs_are_clear_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(cfg)
