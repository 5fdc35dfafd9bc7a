"""The shared training loop's NaN guard and checkpoints, and the SFT loss and batching."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from oversight.models import ModelConfig, Transformer
from oversight.parallel import MeshConfig, make_mesh
from oversight.training.checkpoint import Checkpointer, abstract_like, latest_checkpoint_step
from oversight.training.loop import NonFiniteError, TrainConfig, make_optimizer, train_loop
from oversight.training.sft import epoch_batches, pack_examples, sft_loss


class ListTracker:
    def __init__(self):
        self.logged = []

    def log(self, metrics, step):
        self.logged.append((step, metrics))


def _counting_step(nan_at: int):
    """A fake step: w += 1; the loss turns NaN once w reaches `nan_at`."""

    @jax.jit
    def step(state, batch):
        w = state["w"] + 1.0
        loss = jnp.where(w[0] >= nan_at, jnp.nan, 1.0 / w[0])
        return {"w": w}, {"loss": loss, "grad_norm": jnp.float32(1.0)}

    return step


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    cfg = TrainConfig(steps=20, log_every=1, checkpoint_every=5, keep_checkpoints=2)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    with pytest.raises(NonFiniteError, match=r"at step 7.*Last good checkpoint: step 5"):
        train_loop(
            state={"w": jnp.zeros(2)},
            step_fn=_counting_step(nan_at=7),
            batch_fn=lambda s: {"x": np.zeros((1, 1))},
            cfg=cfg,
            tracker=ListTracker(),
            checkpointer=ckpt,
            mesh=mesh,
            rules=MeshConfig().rules,
        )
    assert latest_checkpoint_step(tmp_path / "ckpt") == 5
    state, meta = ckpt.restore(5, abstract_like({"w": jnp.zeros(2)}))
    np.testing.assert_array_equal(state["w"], [5.0, 5.0])
    assert meta == {"step": 5}


def test_loop_resumes_from_the_latest_checkpoint(tmp_path):
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    seen = []

    def batch_fn(step):
        seen.append(step)
        return {"x": np.zeros((1, 1))}

    ckpt = Checkpointer(tmp_path / "ckpt")
    common = dict(
        step_fn=_counting_step(nan_at=1000),
        batch_fn=batch_fn,
        checkpointer=ckpt,
        mesh=mesh,
        rules=MeshConfig().rules,
    )
    train_loop(
        state={"w": jnp.zeros(2)},
        cfg=TrainConfig(steps=4, checkpoint_every=2),
        tracker=ListTracker(),
        **common,
    )
    tracker = ListTracker()
    final = train_loop(
        state={"w": jnp.zeros(2)},
        cfg=TrainConfig(steps=6, log_every=1, checkpoint_every=2),
        tracker=tracker,
        **common,
    )
    np.testing.assert_array_equal(final["w"], [6.0, 6.0])
    assert seen == [0, 1, 2, 3, 4, 5]
    assert [s for s, _ in tracker.logged] == [5, 6]


def test_sft_loss_counts_response_tokens_only():
    cfg = ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    batch = pack_examples([[1, 4, 5], [1, 6]], [[7, 8, 2], [9, 2]], length=8, pad_id=0)
    loss, aux = sft_loss(model, {k: jnp.asarray(v) for k, v in batch.items()})
    # By hand: the log-prob of each response token given the full prefix, from one forward pass per row.
    nll = []
    for prompt, response in (([1, 4, 5], [7, 8, 2]), ([1, 6], [9, 2])):
        seq = jnp.asarray([prompt + response])
        hidden, _ = model(seq, jnp.arange(seq.shape[1])[None], jnp.ones_like(seq))
        logp = jax.nn.log_softmax(model.logits(hidden)[0], axis=-1)
        nll += [-float(logp[len(prompt) - 1 + i, tok]) for i, tok in enumerate(response)]
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-6)
    assert float(aux["response_tokens"]) == 5


def test_pack_examples_rejects_examples_longer_than_the_context():
    with pytest.raises(
        ValueError, match=r"example 1: prompt \(3 tokens\) \+ response \(4 tokens\).*6 tokens"
    ):
        pack_examples([[1], [1, 2, 3]], [[4], [5, 6, 7, 8]], length=6, pad_id=0)


def test_epoch_batches_are_a_pure_function_of_the_step_and_cover_each_epoch():
    data = {"x": np.arange(10)}
    batch_fn = epoch_batches(data, batch_size=5, seed=3)
    first_epoch = np.concatenate([batch_fn(0)["x"], batch_fn(1)["x"]])
    assert sorted(first_epoch) == list(range(10))
    np.testing.assert_array_equal(batch_fn(1)["x"], epoch_batches(data, 5, 3)(1)["x"])
    assert not np.array_equal(batch_fn(0)["x"], batch_fn(2)["x"])  # a fresh permutation next epoch


def test_a_later_stage_numbers_steps_and_checkpoints_after_the_stages_before_it(tmp_path):
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tracker = ListTracker()
    ckpt = Checkpointer(tmp_path / "checkpoints" / "stage2")
    final = train_loop(
        state={"w": jnp.zeros(2)},
        step_fn=_counting_step(nan_at=1000),
        batch_fn=lambda s: {"x": np.zeros((1, 1))},
        cfg=TrainConfig(steps=4, log_every=2, checkpoint_every=2),
        tracker=tracker,
        checkpointer=ckpt,
        mesh=mesh,
        rules=MeshConfig().rules,
        step_offset=100,
    )
    np.testing.assert_array_equal(final["w"], [4.0, 4.0])
    assert [s for s, _ in tracker.logged] == [102, 104]
    assert latest_checkpoint_step(tmp_path / "checkpoints") == 104  # found through the stage folder


@pytest.mark.parametrize("warmup", [0, 4])
def test_learning_rate_schedule_starts_at_full_rate_without_warmup(warmup):
    """Without warm-up the first step takes the full rate; with it the rate rises from 0 to its peak."""
    cfg = TrainConfig(steps=10, warmup_steps=warmup, learning_rate=0.5, grad_clip=0.0, weight_decay=0.0)
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    steps = []
    for _ in range(warmup + 1):
        update, state = tx.update({"w": jnp.ones(3)}, state, params)
        steps.append(-float(update["w"][0]))  # Adam's first steps move by about the learning rate
    if warmup:
        assert steps[0] == 0.0 and 0 < steps[1] < steps[-1]
        np.testing.assert_allclose(steps[-1], 0.5, rtol=1e-3)
    else:
        np.testing.assert_allclose(steps[0], 0.5, rtol=1e-3)


def test_cpu_training_step_computes_its_products_in_onednn_and_matches_the_default_libraries(monkeypatch):
    """On CPU the train step's products compile into oneDNN (where this jaxlib has it); the step then gives
    the loss, gradient norm and updated parameters that the same step compiled with XLA's default libraries
    gives, up to float32 rounding. Plain SGD at rate 1, so each parameter moves by exactly its gradient."""
    from oversight.parallel import shard_batch
    from oversight.training import loop

    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    rules = MeshConfig().rules
    if loop.training_compiler_options(mesh) is None:
        pytest.skip("this jaxlib compiles no CPU products into oneDNN")
    cfg = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=64)
    tokens = np.random.default_rng(0).integers(0, 128, size=(8, 64)).astype(np.int32)
    ones = np.ones_like(tokens)
    batch = shard_batch({"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, rules)

    def one_step():
        graphdef, state, shardings = loop.init_train_state(cfg, optax.sgd(1.0), 0, mesh, rules)
        step = loop.make_train_step(graphdef, sft_loss, shardings, mesh, rules)
        compiled = step.lower(state, batch).compile().as_text()
        state, metrics = step(state, batch)
        return jax.device_get(state), jax.device_get(metrics), compiled

    state, metrics, compiled = one_step()
    monkeypatch.setattr(loop, "training_compiler_options", lambda mesh: None)
    default_state, default_metrics, default_compiled = one_step()

    assert "__onednn_fusion" in compiled and "__onednn_fusion" not in default_compiled
    np.testing.assert_allclose(metrics["loss"], default_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], default_metrics["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(default_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
