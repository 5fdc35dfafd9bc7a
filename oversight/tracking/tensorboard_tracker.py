"""Optional TensorBoard backend through tensorboardX (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oversight.tracking.jsonl import to_python

TENSORBOARD_DIR = "tensorboard"


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(to_python(row.get(c, ""))) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardTracker:
    """Scalars per step under `run_dir/tensorboard`; summary and tables as text panels.

    On resume, `purge_step` makes TensorBoard hide what a killed attempt wrote after the
    checkpoint; on a fresh start it hides everything an earlier attempt wrote.
    """

    def __init__(self, run_dir: Path, *, resume_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "tracker.tensorboard=true needs tensorboardX: `pip install tensorboardX` "
                "(or install oversight with the dev extra)"
            ) from e
        purge_step = 0 if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(logdir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)
        self._step = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, float(value), global_step=int(step))
        self._step = int(step)

    def summary(self, values: dict[str, Any]) -> None:
        self._writer.add_text("summary", _markdown_table([values]), global_step=self._step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self._writer.add_text(name, _markdown_table(rows), global_step=self._step)

    def finish(self) -> None:
        self._writer.close()
