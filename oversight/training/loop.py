"""The training loop every stage shares: jitted step, evaluation, Orbax checkpoints, resume, NaN guard.

State is an NNX state of (model, optimizer), split from its graph once; the step is a pure function of
(state, batch) jitted with explicit shardings and the state donated, so one program runs every step.
Batches are a pure function of the step number, so a resumed run sees exactly the batches an uninterrupted
run would and ends bit-identical to it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from oversight.errors import ConfigError, UserError
from oversight.models import ModelConfig, make_model, trainable
from oversight.parallel import (
    batch_sharding,
    init_sharded,
    load_checkpoint_sharded,
    shard_batch,
    state_shardings,
)
from oversight.settings import check_fields, setting
from oversight.tracking.progress import progress
from oversight.training.checkpoint import Checkpointer, abstract_like


@dataclass
class TrainConfig:
    # Optimizer steps.
    steps: int = setting(300, ge=0)
    # Sequences per step (global, across all devices).
    batch_size: int = setting(32, ge=1)
    # Gradient accumulation: each step's batch in this many microbatches, one after another, their gradients
    # averaged: the same update for a loss that averages over rows, a fraction of the activation memory.
    microbatches: int = setting(1, ge=1)
    # Peak learning rate (after linear warm-up; cosine decay to 10% of it at the last step).
    learning_rate: float = setting(3e-3, gt=0)
    # Linear warm-up steps.
    warmup_steps: int = setting(20, ge=0)
    # AdamW decoupled weight decay (matrices only; biases, norms and embeddings of rank < 2 are exempt).
    weight_decay: float = setting(0.01, ge=0)
    # Adam betas.
    b1: float = setting(0.9, ge=0, lt=1)
    b2: float = setting(0.99, ge=0, lt=1)
    # Clip the global gradient norm to this; 0 = off.
    grad_clip: float = setting(1.0, ge=0)
    # Log training metrics every N steps.
    log_every: int = setting(10, ge=1)
    # Evaluate every N steps (and after the last step); 0 = only after the last step.
    eval_every: int = setting(100, ge=0)
    # Save a checkpoint every N steps (and after the last step).
    checkpoint_every: int = setting(100, ge=1)
    # Checkpoints kept on disk (the newest ones; at least one, or the run could not be resumed).
    keep_checkpoints: int = setting(2, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "train.")
        if self.batch_size % self.microbatches:
            raise ConfigError(
                f"train.microbatches={self.microbatches} must divide train.batch_size={self.batch_size}"
            )


class NonFiniteError(UserError, FloatingPointError):
    """A loss or gradient norm became NaN/Inf; the message names the step and the checkpoint kept."""


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decay on matrices only) after global-norm clipping; the learning rate rises linearly from 0 over
    `warmup_steps`, then follows a cosine down to a tenth of its peak at `steps`. Without warm-up the first step
    already takes the full rate (a warm-up of one step would make it a step at rate 0)."""
    if cfg.warmup_steps > 0:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            cfg.learning_rate,
            cfg.warmup_steps,
            max(cfg.steps, cfg.warmup_steps + 1),
            end_value=0.1 * cfg.learning_rate,
        )
    else:
        schedule = optax.cosine_decay_schedule(cfg.learning_rate, max(cfg.steps, 1), alpha=0.1)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip > 0 else adamw


def init_train_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int, mesh, rules):
    """(graphdef, state, shardings) of (model, optimizer), built directly in their shardings.

    Weights come from `model_cfg.checkpoint` (a Hugging Face folder) when it is set, else a fresh init.
    """

    def make():
        model = make_model(model_cfg, seed)
        return model, nnx.Optimizer(model, tx, wrt=trainable(model))

    if not model_cfg.checkpoint:
        return init_sharded(make, mesh, rules)
    model = load_checkpoint_sharded(
        model_cfg.checkpoint,
        mesh,
        rules,
        dtype=model_cfg.dtype,
        scalar_heads=model_cfg.scalar_heads,
        lora_rank=model_cfg.lora_rank,
        lora_alpha=model_cfg.lora_alpha,
        seed=seed,
        checkpoint=model_cfg.checkpoint,
    )
    model_graphdef, model_state = nnx.split(model)
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract, mesh, rules)

    def with_optimizer(model_state):
        m = nnx.merge(model_graphdef, model_state)
        return nnx.split((m, nnx.Optimizer(m, tx, wrt=trainable(m))))[1]

    return graphdef, jax.jit(with_optimizer, out_shardings=shardings)(model_state), shardings


LossFn = Callable[[nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]

# XLA on CPU hands matrix products to YNNPACK by default. A training step's products (hundreds to thousands of
# rows) run faster in oneDNN: the SFT and reward-model steps ~20% (bench W1, W4), a whole PPO iteration 7%
# (`small`) to 14% (`tiny`). Decoding's 16-row products run slower there, so only the training steps ask for
# it; YNNPACK keeps the reductions, which XLA's own loops do slower.
_ONEDNN_PRODUCTS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.cache
def _onednn_takes_products() -> bool:
    """Whether this jaxlib compiles a CPU product into oneDNN when asked (builds without oneDNN do not)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    x = jax.ShapeDtypeStruct((64, 64), np.float32, sharding=cpu)
    try:
        compiled = jax.jit(lambda a, b: a @ b, compiler_options=_ONEDNN_PRODUCTS).lower(x, x).compile()
    except Exception:  # an option this jaxlib does not know
        return False
    return "__onednn_fusion" in compiled.as_text()


def training_compiler_options(mesh) -> dict[str, Any] | None:
    """XLA options for a training step's jit on `mesh`: oneDNN products on CPU where available, else none."""
    if mesh.devices.flat[0].platform != "cpu" or not _onednn_takes_products():
        return None
    return dict(_ONEDNN_PRODUCTS)


def make_train_step(graphdef, loss_fn: LossFn, state_shardings, mesh, rules, microbatches: int = 1):
    """One jitted optimizer step: (state, batch) -> (state, metrics). `loss_fn(model, batch) -> (loss, aux)`.

    With `microbatches` > 1 the batch's rows are split into that many equal microbatches whose gradients are
    computed one after another (a `lax.scan`, so only one microbatch's activations live at a time) and
    averaged; the loss and `aux` metrics are their means."""

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        if microbatches == 1:
            grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=True)
            (loss, aux), grads = grad_fn(model, batch)
        else:
            # Plain JAX inside the scan: the trained parameters and the rest as arrays, merged per microbatch.
            model_graphdef, params, rest = nnx.split(model, optimizer.wrt, ...)
            split = jax.tree.map(lambda x: x.reshape(microbatches, -1, *x.shape[1:]), batch)  # (M, B/M, ...)
            micro_grad = jax.value_and_grad(
                lambda p, micro: loss_fn(nnx.merge(model_graphdef, p, rest), micro), has_aux=True
            )

            def accumulate(total, micro):
                (loss, aux), grads = micro_grad(params, micro)
                return jax.tree.map(jnp.add, total, grads), (loss, aux)

            zero = jax.tree.map(jnp.zeros_like, params)
            total, (losses, auxes) = jax.lax.scan(accumulate, zero, split)
            grads = jax.tree.map(lambda g: g / microbatches, total)
            loss, aux = losses.mean(), jax.tree.map(lambda a: a.mean(0), auxes)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return nnx.state((model, optimizer)), metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding(mesh, rules)),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
        compiler_options=training_compiler_options(mesh),
    )


def train_loop(
    *,
    state: Any,
    step_fn: Callable,
    batch_fn: Callable[[int], dict[str, np.ndarray]],
    cfg: TrainConfig,
    tracker,
    checkpointer: Checkpointer,
    mesh,
    rules: dict[str, list[str]],
    eval_fn: Callable[[Any, int], dict[str, float]] | None = None,
    desc: str = "train",
    step_offset: int = 0,
) -> Any:
    """Run `cfg.steps` steps from the latest checkpoint (or from `state`); returns the final state.

    `batch_fn(step)` gives the host batch of 0-based step `step`; metrics are logged at 1-based step numbers
    (the number of optimizer updates done) plus `step_offset`, which are also the checkpoint numbers. A
    later stage of a multi-stage experiment passes the steps of the stages before it as `step_offset`, so
    step numbers grow monotonically over the whole run (as W&B requires and resume relies on).
    """
    latest = checkpointer.latest_step()
    start = latest - step_offset if latest else 0
    if start:
        state, _ = checkpointer.restore(latest, abstract_like(state))
    bar = progress(cfg.steps, start, desc=desc)
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, cfg.steps):
        done = step + 1
        global_step = step_offset + done
        state, metrics = step_fn(state, shard_batch(batch_fn(step), mesh, rules))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            checkpointer.wait()
            kept = checkpointer.latest_step()
            raise NonFiniteError(
                f"{desc}: non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) at step "
                f"{global_step}; stopped. Last good checkpoint: "
                + (
                    f"step {kept} in {checkpointer.directory}"
                    if kept
                    else "none (no checkpoint was saved yet)"
                )
            )
        window_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - window_start
            logged = {f"train/{k}": v for k, v in metrics.items()}
            logged["perf/steps_per_sec"] = window_steps / elapsed
            tracker.log(logged, step=global_step)
            window_start, window_steps = time.perf_counter(), 0
        if eval_fn is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            tracker.log(eval_fn(state, global_step), step=global_step)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpointer.save(global_step, state, {"step": global_step})
    bar.close()
    checkpointer.wait()
    return state
