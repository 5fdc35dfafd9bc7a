"""Device mesh, logical-to-mesh axis rules, and placement of parameters, optimizer state and batches."""

from oversight.parallel.mesh import (
    MeshConfig,
    batch_sharding,
    init_sharded,
    initialize_distributed,
    load_checkpoint_sharded,
    logical_to_spec,
    make_mesh,
    shard_batch,
    state_shardings,
)

__all__ = [
    "MeshConfig",
    "batch_sharding",
    "init_sharded",
    "load_checkpoint_sharded",
    "initialize_distributed",
    "logical_to_spec",
    "make_mesh",
    "shard_batch",
    "state_shardings",
]
