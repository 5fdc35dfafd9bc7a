"""The one tracking interface the trainers use, and `open_tracker`, which picks its backends from config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from oversight.settings import check_fields, setting
from oversight.tracking.jsonl import JsonlTracker
from oversight.tracking.run_info import process_index
from oversight.tracking.tensorboard_tracker import TensorBoardTracker
from oversight.tracking.wandb_tracker import WandbTracker

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class TrackerConfig:
    # W&B mode: "offline" needs no account (sync later with `wandb sync`), "disabled" logs nothing.
    wandb_mode: str = setting("offline", choices=WANDB_MODES)
    # W&B project the runs land in.
    wandb_project: str = "oversight"
    # W&B team or user; None uses the account's default entity.
    wandb_entity: str | None = None
    # Also write TensorBoard event files to run_dir/tensorboard (needs tensorboardX).
    tensorboard: bool = False
    # Labels added to every run, e.g. "method:debate"; merged with the tags the experiment passes.
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_fields(self, "tracker.")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Step metrics, named with a section prefix (`train/loss`, `eval/acc`) that W&B turns into panels."""

    def summary(self, values: dict[str, Any]) -> None:
        """Final scalars of the run; later calls update earlier ones."""

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        """A results table, one row per measured quantity; a second call with the same name replaces it."""

    def finish(self) -> None:
        """Closes files and ends the W&B run, so the next job in the same process starts clean."""


class CompositeTracker:
    """Sends every call to each backend in turn."""

    def __init__(self, backends: list[Tracker]):
        self.backends = backends

    def log(self, metrics: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for backend in self.backends:
            backend.summary(values)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        for backend in self.backends:
            backend.table(name, rows)

    def finish(self) -> None:
        # Every backend gets to finish even if one fails, so no W&B run is left open.
        errors = []
        for backend in self.backends:
            try:
                backend.finish()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


def open_tracker(
    cfg: TrackerConfig,
    run_dir: Path,
    *,
    config: dict,
    name: str,
    group: str,
    job_type: str,
    tags: list[str],
    resume_step: int | None = None,
) -> Tracker:
    """Opens the configured backends for one job: JSONL always, W&B, and TensorBoard if asked.

    `group` is the experiment or sweep, `job_type` the stage (`sft`, `reward_model`, `ppo`),
    `tags` the method labels. Pass `resume_step` (the restored checkpoint's step) when resuming,
    None when starting from scratch. Only process 0 records anything: other hosts would write
    the same files and the same W&B run.
    """
    if process_index() != 0:
        return CompositeTracker([])
    jsonl = JsonlTracker(run_dir, resume_step=resume_step)
    # JSONL first: a step W&B has seen is always in metrics.jsonl, which resuming relies on.
    backends: list[Tracker] = [jsonl]
    try:
        if cfg.tensorboard:
            backends.append(TensorBoardTracker(run_dir, resume_step=resume_step))
        backends.append(
            WandbTracker(
                run_dir,
                mode=cfg.wandb_mode,
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                config=config,
                name=name,
                group=group,
                job_type=job_type,
                tags=list(dict.fromkeys([*cfg.tags, *tags])),
                resume=resume_step is not None,
                logged_through=jsonl.logged_through,
            )
        )
    except BaseException:
        CompositeTracker(backends).finish()
        raise
    return CompositeTracker(backends)
