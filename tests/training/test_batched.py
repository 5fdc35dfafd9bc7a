"""Passes over data sets in fixed-size batches: the same outputs as one batch of every row, one compiled shape
for every batch (a ragged tail and a small data set are padded), aggregates exact over batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from oversight.models import ModelConfig, make_model
from oversight.parallel import MeshConfig, make_mesh
from oversight.training.batched import batch_rows, map_batches
from oversight.training.sft import heldout_loss, pack_examples, response_nll, sft_loss

RULES = MeshConfig().rules
CFG = ModelConfig(family="gpt2", vocab_size=64, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)


@jax.jit
def _per_row(batch):  # rows independent: (B, T) -> {"sum": (B,), "twice": (B, T)}
    x = batch["x"].astype(jnp.float32)
    return {"sum": (x * batch["w"]).sum(-1), "twice": 2 * x}


def _data(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {"x": rng.integers(0, 9, (n, 5)).astype(np.int32), "w": rng.random((n, 5)).astype(np.float32)}


def test_batches_give_every_rows_output_with_one_compiled_shape():
    fn = jax.jit(lambda b: _per_row(b))  # a fresh cache to count programs in
    data = _data(7)
    whole = jax.device_get(_per_row(data))
    out = map_batches(fn, data, 3)  # batches of 3, 3, 1 + 2 padding rows
    np.testing.assert_allclose(out["sum"], whole["sum"], rtol=1e-6)
    np.testing.assert_array_equal(out["twice"], whole["twice"])
    assert out["sum"].shape == (7,) and isinstance(out["sum"], np.ndarray)
    small = map_batches(fn, _data(2), 3)  # fewer rows than a batch: padded to the same shape
    np.testing.assert_allclose(small["sum"], jax.device_get(_per_row(_data(2)))["sum"], rtol=1e-6)
    assert fn._cache_size() == 1


def test_batches_on_a_mesh_are_a_multiple_of_its_batch_devices():
    mesh = make_mesh(MeshConfig(data=8, fsdp=1, tensor=1))
    seen = []

    def fn(batch):
        seen.append(batch["x"].shape[0])
        return _per_row(batch)

    data = _data(11)
    out = map_batches(fn, data, 3, mesh=mesh, rules=RULES)  # 3 rounds up to 8: batches of 8, 8
    assert seen == [8, 8]
    np.testing.assert_allclose(out["sum"], jax.device_get(_per_row(data))["sum"], rtol=1e-6)


def test_map_batches_refuses_ragged_or_empty_data():
    with pytest.raises(ValueError, match="different lengths"):
        map_batches(_per_row, {"x": np.zeros((3, 5)), "w": np.zeros((4, 5))}, 2)
    with pytest.raises(ValueError, match="no rows"):
        map_batches(_per_row, {"x": np.zeros((0, 5))}, 2)
    with pytest.raises(ValueError, match="rows=0"):
        map_batches(_per_row, _data(3), 0)


def test_batch_rows_fit_the_widest_activation_in_the_budget(monkeypatch):
    monkeypatch.setattr("oversight.training.batched.ACTIVATION_BUDGET_BYTES", 2**20)
    real_vocab = ModelConfig(vocab_size=49152, d_model=128, n_heads=4)
    # logits (rows, 16, 49152) float32: 1 MiB holds 0 rows of them, so 1
    assert batch_rows(real_vocab, 16) == 1
    # without the LM head the MLP's gate and up projections (2 x 512) are the widest: 2^20 / (4 * 16 * 1024)
    assert batch_rows(real_vocab, 16, logits=False) == 16
    assert batch_rows(CFG, 8) == 2**20 // (4 * 8 * 256)
    assert batch_rows(CFG, 8, 3) == 2**20 // (4 * 3 * 8 * 256)  # rows of 3 sequences each


def _examples(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, 64, rng.integers(1, 6))) for _ in range(n)]
    responses = [list(rng.integers(1, 64, rng.integers(1, 8))) for _ in range(n)]
    return pack_examples(prompts, responses, 16, pad_id=0)


def test_heldout_loss_in_batches_equals_the_loss_of_one_batch():
    model = make_model(CFG, seed=0)
    graphdef, state = nnx.split(model)
    data = _examples(7)

    @jax.jit
    def nll(state, batch):
        return response_nll(nnx.merge(graphdef, state), batch)

    one_batch = float(jax.jit(lambda s, b: sft_loss(nnx.merge(graphdef, s), b)[0])(state, data))
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    fn = functools.partial(nll, state)
    batched = heldout_loss(fn, data, 3, mesh=mesh, rules=RULES)  # 3, 3, 1 + 2 padding rows
    assert batched == pytest.approx(one_batch, rel=1e-6)
    assert heldout_loss(fn, data, 7, mesh=mesh, rules=RULES) == pytest.approx(one_batch, rel=1e-6)
    assert nll._cache_size() == 2  # one program per batch shape, not per batch


def test_microbatches_give_the_update_of_the_whole_batch():
    """Gradient accumulation: on a loss that averages over rows (every row with as many response tokens), a
    step over 4 microbatches updates the parameters as one step over the batch does."""
    import optax

    from oversight.training.loop import TrainConfig, init_train_state, make_train_step

    rng = np.random.default_rng(0)
    data = pack_examples([list(rng.integers(1, 64, 5)) for _ in range(8)],
                         [list(rng.integers(1, 64, 4)) for _ in range(8)], 16, 0)  # fmt: skip
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    tx = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step would be ~ its sign)
    results = []
    for m in (1, 4):
        graphdef, state, shardings = init_train_state(CFG, tx, 0, mesh, RULES)
        step = make_train_step(graphdef, sft_loss, shardings, mesh, RULES, microbatches=m)
        state, metrics = step(state, data)
        results.append((jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)), metrics))
    (whole, m1), (micro, m4) = results
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4)
    for a, b in zip(whole, micro, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="microbatches=3 must divide train.batch_size=8"):
        TrainConfig(batch_size=8, microbatches=3)


def test_microbatches_not_dividing_a_small_data_sets_batch_are_a_named_error(tmp_path):
    from types import SimpleNamespace

    from oversight.errors import ConfigError
    from oversight.pipeline import RunContext
    from oversight.pipeline.stages import Trainer
    from oversight.training.loop import TrainConfig

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    cfg = SimpleNamespace(seed=0, task=SimpleNamespace(name="arithmetic", difficulty=1), mesh=MeshConfig())
    tracker = SimpleNamespace(log=lambda *a, **k: None, summary=lambda *a: None, table=lambda *a: None)
    ctx = RunContext(cfg, None, tmp_path, tracker, mesh)
    trainer = Trainer.from_config(CFG, sft_loss, TrainConfig(steps=1, batch_size=8, microbatches=4), ctx, 0)
    with pytest.raises(ConfigError, match="6 training examples give batches of 6, which microbatches=4"):
        trainer.fit(ctx.stage("sft", 1), _examples(6), seed=0)  # fewer examples than a batch: batches of 6
