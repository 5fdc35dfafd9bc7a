"""The always-on backend: plain JSON files in the run folder, readable without W&B or TensorBoard."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def to_python(value: Any) -> Any:
    """Turns numpy/JAX scalars and arrays (also inside dicts and lists) into plain Python for JSON; a NaN or
    infinite number becomes None (JSON null: strict JSON has no NaN, and a missing value is what it means)."""
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if hasattr(value, "tolist"):
        return to_python(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs) -> str:
    """Strict JSON of `value` (see `to_python`)."""
    return json.dumps(to_python(value), allow_nan=False, **kwargs)


def _file_mode() -> int:
    """The mode a newly created file gets here: 0666 less the process umask (as `open` would give)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: Path, text: str) -> None:
    """Writes through a temp file and os.replace, so a kill never leaves a half-written file behind. The file
    gets the usual mode of a new file (not the temp file's private 0600), so colleagues can read results."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yields the objects of a JSONL file.

    A broken last line is what a killed writer leaves and is skipped; a broken line elsewhere
    means the file is damaged and raises, naming file and line.
    """
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                return
            raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from e


def _truncate_metrics(path: Path, resume_step: int) -> int | None:
    """Keeps only the lines with step <= resume_step; returns the highest step the file had before."""
    kept, last_step = [], None
    for row in read_jsonl(path):
        last_step = row["step"] if last_step is None else max(last_step, row["step"])
        if row["step"] <= resume_step:
            kept.append(dumps(row) + "\n")
    write_json_atomic(path, "".join(kept))
    return last_step


class JsonlTracker:
    """Writes `metrics.jsonl` (one object per log call), `summary.json` and `<table>.jsonl` in `run_dir`.

    With `resume_step`, metrics after that step (logged by a killed attempt) are dropped and new
    ones appended, so a resumed run ends with the same file as an uninterrupted one. Without it
    the run starts afresh and any old metrics/summary in `run_dir` are replaced.
    """

    def __init__(self, run_dir: Path, *, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_path = metrics_path = self.run_dir / METRICS_FILE
        summary_path = self.run_dir / SUMMARY_FILE
        # The highest step an earlier attempt logged; other backends use it to keep W&B steps monotonic.
        self.logged_through: int | None = None
        self._summary: dict[str, Any] = {}
        if resume_step is None:
            metrics_path.write_text("")
            summary_path.unlink(missing_ok=True)
        else:
            if metrics_path.exists():
                self.logged_through = _truncate_metrics(metrics_path, resume_step)
            if summary_path.exists():
                self._summary = json.loads(summary_path.read_text())

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name in metrics:
            if "/" not in name:
                raise ValueError(f"metric name {name!r} needs a section prefix such as 'train/' or 'eval/'")
        row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        # Opened per call: nothing sits in a buffer when the run is killed, and no handle is left open.
        with open(self._metrics_path, "a") as f:
            f.write(dumps(row) + "\n")

    def summary(self, values: dict[str, Any]) -> None:
        self._summary.update(to_python(values))
        write_json_atomic(self.run_dir / SUMMARY_FILE, dumps(self._summary, indent=2) + "\n")

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not _TABLE_NAME.fullmatch(name) or name == Path(METRICS_FILE).stem:
            raise ValueError(
                f"table name {name!r} must be a plain file name (letters, digits, _.-) other than 'metrics'"
            )
        text = "".join(dumps(row) + "\n" for row in rows)
        write_json_atomic(self.run_dir / f"{name}.jsonl", text)

    def finish(self) -> None:
        """Nothing to close: every call above has finished writing when it returns."""
