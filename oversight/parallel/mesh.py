"""Meshes and shardings.

Model code names logical axes only (`embed`, `mlp`, `heads`, …). A table of rules from the config maps each
logical axis to zero or more mesh axes (`data`, `fsdp`, `tensor`). Mesh axes are `Auto` (GSPMD propagation):
parameters, optimizer state and batches are placed explicitly and XLA propagates shardings through the
model, so model code needs no per-op sharding annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from oversight.settings import setting

MESH_AXES = ("data", "fsdp", "tensor")


def _default_rules() -> dict[str, list[str]]:
    return {
        "batch": ["data", "fsdp"],
        "vocab": ["tensor"],
        "embed": ["fsdp"],
        "mlp": ["tensor"],
        "heads": ["tensor"],
        "kv_heads": ["tensor"],
        "head_dim": [],
        "norm": [],
    }


@dataclass
class MeshConfig:
    # Data-parallel axis size; -1 = the devices the other axes leave.
    data: int = setting(-1, ge=-1)
    # Fully-sharded data-parallel axis size (parameters and optimizer state split along `embed`).
    fsdp: int = setting(1, ge=-1)
    # Tensor-parallel axis size (heads, MLP width, vocabulary split).
    tensor: int = setting(1, ge=-1)
    # Logical axis -> mesh axes. A dimension a mesh axis does not divide stays replicated on that axis.
    rules: dict[str, list[str]] = field(default_factory=_default_rules)
    # Call jax.distributed.initialize() first (multi-host jobs under SLURM, Kubernetes, Cloud TPU).
    distributed: bool = False
    # Where process 0 listens ("host:port"), how many processes, and this one's index; null: detected from
    # the cluster's environment (SLURM, Kubernetes, Cloud TPU). Set all three to launch processes by hand.
    coordinator: str | None = None
    num_processes: int | None = setting(None, ge=1)
    process_id: int | None = setting(None, ge=0)


def initialize_distributed(cfg: MeshConfig) -> None:
    """Join a multi-host job; must run before anything touches a device. Single-host runs skip it. On CPU the
    processes' collectives go over gloo."""
    if cfg.distributed:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"mesh: at most one axis may be -1, got data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor}"
        )
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise ValueError(
            f"mesh: data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor} does not fit {len(devices)} devices"
        )
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh: axis sizes {dict(zip(MESH_AXES, sizes, strict=True))} need {math.prod(sizes)} devices, "
            f"{len(devices)} available"
        )
    unknown = {a for axes in cfg.rules.values() for a in axes}
    if unknown - set(MESH_AXES):
        raise ValueError(
            f"mesh.rules name unknown mesh axes {sorted(unknown - set(MESH_AXES))}; known: {MESH_AXES}"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
    names: tuple[str | None, ...],
    shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    rules: dict[str, list[str]],
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry logical `names`.

    Mesh axes of size 1 are dropped; a mesh axis that does not divide its dimension, or that an earlier
    dimension already uses, leaves that dimension replicated on it. (Flax's `logical_to_mesh_axes` maps names
    without the shape, so a vocabulary of 50257 over 2 devices would fail at placement; hence this version.)
    """
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape, strict=True):
        axes = []
        for axis in rules.get(name, []) if name is not None else []:
            n = mesh.shape[axis]
            if n == 1 or axis in used or size % (n * math.prod(mesh.shape[a] for a in axes)):
                continue
            axes.append(axis)
            used.add(axis)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules: dict[str, list[str]]):
    """NamedSharding for every array of an NNX state (parameters, optimizer moments…), from its logical names.

    Arrays without logical names (step counters, RNG keys) are replicated. Placeholders without arrays, such
    as the masked-out parameters in the state of `optax.multi_transform`, stay as they are.
    """

    def one(x):
        if isinstance(x, nnx.Variable):
            names = x.get_metadata().get("out_sharding")
            value = x.get_value()
            if not hasattr(
                value, "shape"
            ):  # a placeholder with no arrays (optax's MaskedNode): nothing to place
                return x
            spec = logical_to_spec(tuple(names), value.shape, mesh, rules) if names else PartitionSpec()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh, rules: dict[str, list[str]], ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array: leading dimension on the `batch` rule's mesh axes, the rest replicated."""
    axes = tuple(a for a in rules.get("batch", []) if mesh.shape[a] > 1)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, rules: dict[str, list[str]]) -> dict:
    """Place a global host batch on the mesh; each device takes its own rows.

    Batches are a pure function of (seed, step), so on a multi-host job every process builds the same global
    batch and copies only the rows its own devices hold.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        sharding = batch_sharding(mesh, rules, value.ndim)
        out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
    return out


def init_sharded(make, mesh: jax.sharding.Mesh, rules: dict[str, list[str]]):
    """Build NNX objects (`make()` returns a module or a tuple of them) directly in their target shardings.

    The objects are first traced abstractly, so no full replicated copy of any parameter is ever created.
    Returns (graphdef, state, shardings of state).
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=shardings)()
    return graphdef, state, shardings


def load_checkpoint_sharded(path: str, mesh: jax.sharding.Mesh, rules: dict[str, list[str]], **kwargs):
    """Import a Hugging Face checkpoint folder, putting each tensor straight into its target sharding.

    `kwargs` go to `load_hf_checkpoint` (dtype, scalar_heads, seed, tokenizer, config overrides).
    """
    from oversight.models.hf_import import load_hf_checkpoint, read_model_config
    from oversight.models.transformer import Transformer

    overrides = {k: v for k, v in kwargs.items() if k not in ("tokenizer", "seed")}
    cfg = read_model_config(path, **overrides)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    names = {p: v.get_metadata().get("out_sharding") for p, v in nnx.to_flat_state(nnx.state(abstract))}

    def place(p, array: np.ndarray) -> jax.Array:
        spec = logical_to_spec(tuple(names[p]), array.shape, mesh, rules) if names[p] else PartitionSpec()
        return jax.device_put(array, NamedSharding(mesh, spec))

    return load_hf_checkpoint(path, place=place, **kwargs)
