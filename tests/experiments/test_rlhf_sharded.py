"""One PPO update phase (the jitted `make_ppo_update` the `rlhf` experiment runs) on 8 CPU devices equals the
same phase on one device: same loss and statistics, same updated parameters and optimizer state."""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from oversight.models import ModelConfig
from oversight.parallel import MeshConfig, make_mesh
from oversight.training.loop import init_train_state
from oversight.training.ppo import PPOConfig, make_ppo_update, response_outputs

RULES = MeshConfig().rules
MODEL = ModelConfig(
    family="gpt2",
    vocab_size=64,
    d_model=64,
    n_layers=1,
    n_heads=8,
    max_seq_len=32,
    scalar_heads=["value"],
)
PPO = PPOConfig(epochs=2, minibatches=2, kl_coef=0.05)
ROLLOUT, PROMPT, RESPONSE = 16, 8, 12
# AdamW with eps 1e-3: Adam's update g / (sqrt(v) + eps) turns float rounding in a gradient near 0 (below the
# default eps of 1e-8) into a step of the size of the learning rate, whatever the mesh (one attention weight
# ended 1.9e-5 apart after 4 steps once the backward fused differently); with eps 1e-3 an update moves at
# most lr / eps times a gradient's rounding error, as in tests/parallel/test_sharding.py.
TX = optax.adamw(1e-3, eps=1e-3)
LAYOUTS = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


@functools.cache
def _rollout() -> dict[str, np.ndarray]:
    """A rollout batch as the experiment builds one: left-padded prompts, padded responses, old log-probs and
    values from the initial policy itself. Half the rows have them shifted by 0.5, far past both clip ranges,
    so the clip fractions are not decided by rounding at a clip boundary."""
    rng = np.random.default_rng(0)
    prompt_len = rng.integers(3, PROMPT + 1, size=ROLLOUT)
    prompt_mask = (np.arange(PROMPT)[None] >= PROMPT - prompt_len[:, None]).astype(np.int32)
    prompt = rng.integers(3, 64, size=(ROLLOUT, PROMPT)).astype(np.int32) * prompt_mask
    response_len = rng.integers(2, RESPONSE + 1, size=ROLLOUT)
    response_mask = (np.arange(RESPONSE)[None] < response_len[:, None]).astype(np.int32)
    response = rng.integers(3, 64, size=(ROLLOUT, RESPONSE)).astype(np.int32) * response_mask
    real = response_mask.astype(np.float32)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    graphdef, state, _ = init_train_state(MODEL, TX, seed=0, mesh=mesh, rules=RULES)
    model = nnx.merge(graphdef, state)[0]
    logp, _, values = response_outputs(
        model, prompt, prompt_mask, response, response_mask, PPO.temperature, PPO.value_head
    )
    shift = 0.5 * (np.arange(ROLLOUT) % 2)[:, None] * real
    return {
        "prompt": prompt,
        "prompt_mask": prompt_mask,
        "response": response,
        "response_mask": response_mask,
        "old_logprobs": (np.asarray(logp) + shift).astype(np.float32),
        "old_values": (np.asarray(values) + shift).astype(np.float32),
        "advantages": (rng.normal(size=(ROLLOUT, RESPONSE)) * real).astype(np.float32),
        "returns": (rng.normal(size=(ROLLOUT, RESPONSE)) * real).astype(np.float32),
    }


def _one_update(mesh):
    graphdef, state, shardings = init_train_state(MODEL, TX, seed=0, mesh=mesh, rules=RULES)
    update = make_ppo_update(graphdef, PPO, ROLLOUT, shardings, mesh, RULES)
    state, stats = update(state, _rollout(), jax.random.key(3))
    return jax.device_get(state), {k: float(v) for k, v in jax.device_get(stats).items()}


@pytest.fixture(scope="module")
def reference():
    """The single-device update, computed once; it must really move the parameters."""
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    initial = jax.device_get(init_train_state(MODEL, TX, seed=0, mesh=mesh, rules=RULES)[1])
    state, stats = _one_update(mesh)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(state[0]), jax.tree.leaves(initial[0]), strict=True)
    ]
    assert sum(moved) > len(moved) // 2, "the update left most parameters where they were"
    assert np.isfinite(stats["loss"]) and stats["policy/clipfrac"] > 0 and stats["value/clipfrac"] > 0
    return state, stats


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: "x".join(map(str, c)))
def test_sharded_ppo_update_equals_single_device(reference, layout):
    ref_state, ref_stats = reference
    assert len(jax.devices()) == 8, "tests/conftest.py must force 8 host devices"
    mesh = make_mesh(MeshConfig(data=layout[0], fsdp=layout[1], tensor=layout[2]))
    state, stats = _one_update(mesh)
    assert set(stats) == set(ref_stats)
    for name, value in stats.items():
        np.testing.assert_allclose(value, ref_stats[name], rtol=0, atol=1e-5, err_msg=name)
    got, want = jax.tree.leaves(state), jax.tree.leaves(ref_state)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
