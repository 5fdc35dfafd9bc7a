"""One process of tests/parallel/test_multiprocess.py (not a test itself).

    python distributed_worker.py OUT NUM_PROCESSES PROCESS_ID PORT [RESTORE_DIR]

Runs on a (data 2, fsdp 2, tensor 2) mesh over the 8 CPU devices of all processes (8 / NUM_PROCESSES each,
joined by `jax.distributed` over localhost with gloo collectives): two SFT steps of the framework's jitted
train step, a checkpoint of that state (OUT/checkpoint), one PPO update phase (`make_ppo_update`), and a
tracker opened on OUT/run_p<PROCESS_ID>. Writes OUT/p<PROCESS_ID>.npz with every result gathered to host.
With RESTORE_DIR it only restores that checkpoint into this mesh and writes OUT/restored_p<PROCESS_ID>.npz.
"""

import os
import sys
from pathlib import Path

out, n_processes, process_id, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
restore_dir = sys.argv[5] if len(sys.argv) > 5 else None
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // n_processes}"

import jax  # noqa: E402

if n_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=n_processes, process_id=process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from oversight.models import ModelConfig  # noqa: E402
from oversight.parallel import MeshConfig, make_mesh, shard_batch  # noqa: E402
from oversight.pipeline.context import RunContext  # noqa: E402
from oversight.tracking import TrackerConfig, open_tracker  # noqa: E402
from oversight.training.checkpoint import Checkpointer, abstract_like  # noqa: E402
from oversight.training.loop import init_train_state, make_train_step  # noqa: E402
from oversight.training.ppo import PPOConfig, make_ppo_update, response_outputs  # noqa: E402
from oversight.training.sft import sft_loss  # noqa: E402

RULES = MeshConfig().rules
MODEL = ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=8, max_seq_len=32, scalar_heads=["value"])
# eps 1e-3: a gradient's rounding near 0 moves a weight at most lr / eps times it (tests/parallel/test_sharding.py)
TX = optax.adamw(1e-2, eps=1e-3)
PPO = PPOConfig(epochs=2, minibatches=2, kl_coef=0.05)
ROLLOUT, PROMPT, RESPONSE = 16, 8, 12


def gathered(tree) -> list[np.ndarray]:
    """Every leaf as one host array, the same on every process."""
    return [np.asarray(x) for x in jax.tree.leaves(multihost_utils.process_allgather(tree, tiled=True))]


def sft_batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 64, size=(16, 24)).astype(np.int32)
    loss_mask = (np.arange(24)[None] >= 8).astype(np.int32).repeat(16, 0)
    return {"tokens": tokens, "mask": np.ones_like(tokens), "loss_mask": loss_mask}


def rollout() -> dict[str, np.ndarray]:
    """A rollout batch with old log-probs and values from the initial policy, computed on one local device
    (the same on every process)."""
    rng = np.random.default_rng(1)
    prompt_len = rng.integers(3, PROMPT + 1, size=ROLLOUT)
    prompt_mask = (np.arange(PROMPT)[None] >= PROMPT - prompt_len[:, None]).astype(np.int32)
    prompt = rng.integers(3, 64, size=(ROLLOUT, PROMPT)).astype(np.int32) * prompt_mask
    response_len = rng.integers(2, RESPONSE + 1, size=ROLLOUT)
    response_mask = (np.arange(RESPONSE)[None] < response_len[:, None]).astype(np.int32)
    response = rng.integers(3, 64, size=(ROLLOUT, RESPONSE)).astype(np.int32) * response_mask
    real = response_mask.astype(np.float32)
    local = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.local_devices()[:1])
    graphdef, state, _ = init_train_state(MODEL, TX, seed=0, mesh=local, rules=RULES)
    logp, _, values = response_outputs(
        nnx.merge(graphdef, state)[0], prompt, prompt_mask, response, response_mask, PPO.temperature, "value"
    )
    shift = 0.5 * (np.arange(ROLLOUT) % 2)[:, None] * real  # half the rows far past both clip ranges
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


def main() -> None:
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert jax.process_count() == n_processes and jax.device_count() == 8
    graphdef, state, shardings = init_train_state(MODEL, TX, seed=0, mesh=mesh, rules=RULES)
    if restore_dir:
        restored, meta = Checkpointer(Path(restore_dir)).restore(2, abstract_like(state))
        arrays = {f"sft_{i}": a for i, a in enumerate(gathered(restored))}
        np.savez(out / f"restored_p{process_id}.npz", **arrays, step=np.array(meta["step"]))
        return
    step = make_train_step(graphdef, sft_loss, shardings, mesh, RULES)
    losses = []
    for _ in range(2):
        state, metrics = step(state, shard_batch(sft_batch(), mesh, RULES))
        losses.append(float(metrics["loss"]))
    sft_leaves = gathered(state)
    checkpointer = Checkpointer(out / "checkpoint")
    checkpointer.save(2, state, {"step": 2})
    checkpointer.close()

    graphdef, state, shardings = init_train_state(MODEL, TX, seed=0, mesh=mesh, rules=RULES)
    update = make_ppo_update(graphdef, PPO, ROLLOUT, shardings, mesh, RULES)
    state, stats = update(state, shard_batch(rollout(), mesh, RULES), jax.random.key(3))
    stats = {k: float(v) for k, v in jax.device_get(stats).items()}

    tracker = open_tracker(TrackerConfig(wandb_mode="disabled"), out / f"run_p{process_id}", config={},
                           name="mp", group="mp", job_type="test", tags=[])  # fmt: skip
    tracker.log({"train/loss": losses[-1]}, step=1)
    tracker.finish()
    # What an experiment asks before writing a file of its own into the run folder (rrm's score files).
    writes_files = RunContext(cfg=None, options=None, run_dir=out, tracker=None, mesh=mesh).writes_files

    arrays = {f"sft_{i}": a for i, a in enumerate(sft_leaves)} | {"sft_losses": np.array(losses)}
    arrays |= {f"ppo_{i}": a for i, a in enumerate(gathered(state))}
    arrays |= {f"stat_{k.replace('/', ':')}": np.array(v) for k, v in stats.items()}
    np.savez(out / f"p{process_id}.npz", **arrays)
    (out / f"p{process_id}_writes_files.txt").write_text(str(writes_files))


if __name__ == "__main__":
    main()
