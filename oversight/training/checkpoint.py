"""Orbax checkpoints of a training state: asynchronous, keep-last-N, restored straight into its shardings.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous checkpoint intact, and a half-written one is never mistaken for a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from oversight.errors import UserError


class ResumeError(UserError, ValueError):
    """A checkpoint in the run folder that cannot be restored into this run's state."""


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=True, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving `state` (a pytree of arrays) and JSON `meta` at `step`; returns before the write ends."""
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore into `abstract_state` (jax.ShapeDtypeStruct leaves with shardings)."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # Orbax raises many kinds (missing file, bad shape, corrupt data)
            raise ResumeError(
                f"{self.directory / str(step)}: cannot restore this checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); it was damaged or written by another model or "
                "code version. Move it away to resume from an earlier one, or start in another hydra.run.dir"
            ) from e
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Block until pending saves are on disk; call before exit or the last checkpoint is lost."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) matching a pytree of arrays: the target for `restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def latest_checkpoint_step(directory: Path) -> int | None:
    """Newest complete checkpoint step in `directory` or its stage sub-folders (`checkpoints/<stage>/<step>`).

    Multi-stage experiments number steps globally (a stage continues the previous stage's count), so the
    newest step over all stages is where a resumed run picks up. Orbax's temporary folders are not complete
    and do not count.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    steps += [
        int(p.name)
        for sub in directory.iterdir()
        if sub.is_dir() and not sub.name.isdigit()
        for p in sub.iterdir()
        if p.is_dir() and p.name.isdigit()
    ]
    return max(steps) if steps else None
