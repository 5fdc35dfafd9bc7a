"""W&B backend: one independent run per tracker, offline by default, resumable from the run folder."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from oversight.tracking.jsonl import to_python, write_json_atomic
from oversight.tracking.run_info import process_index

WANDB_RUN_FILE = "wandb_run.json"


class WandbTracker:
    """Logs to a W&B run whose files live in `run_dir/wandb`.

    Only process 0 uses `mode`; other hosts get a disabled run. The run id is kept in
    `run_dir/wandb_run.json`, so a resumed job continues the same W&B run. W&B drops steps
    lower than ones it has already seen, so after a resume the steps up to the highest one
    any earlier attempt logged are skipped: that attempt's values are already in W&B
    (and equal, since the same seed gives the same metrics).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        mode: str,
        project: str,
        entity: str | None,
        config: dict[str, Any],
        name: str,
        group: str,
        job_type: str,
        tags: list[str],
        resume: bool = False,
        logged_through: int | None = None,
    ):
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        state_path = run_dir / WANDB_RUN_FILE
        state = json.loads(state_path.read_text()) if resume and state_path.exists() else {}
        run_id = state.get("id") or secrets.token_hex(6)
        previous = [s for s in (state.get("logged_through"), logged_through) if s is not None]
        self._skip_through = max(previous) if previous else None
        primary = process_index() == 0
        if primary:
            write_json_atomic(
                state_path, json.dumps({"id": run_id, "logged_through": self._skip_through}) + "\n"
            )

        self._run = wandb.init(
            dir=run_dir,
            id=run_id,
            resume="allow",
            # Independent runs: Hydra multirun jobs share one process and must not share a run.
            reinit="create_new",
            mode=mode if primary else "disabled",
            project=project,
            entity=entity,
            name=name,
            group=group,
            job_type=job_type,
            tags=tags,
            config=to_python(config),
        )
        self._wandb = wandb

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self._skip_through is not None and step <= self._skip_through:
            return
        self._run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def summary(self, values: dict[str, Any]) -> None:
        self._run.summary.update(to_python(values))

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = [[to_python(row.get(c)) for c in columns] for row in rows]
        # In the summary rather than the history: a results table belongs to no step, and W&B
        # would drop it if logged at a step below one it has seen (after a resume).
        self._run.summary[name] = self._wandb.Table(columns=columns, data=data)

    def finish(self) -> None:
        self._run.finish()
