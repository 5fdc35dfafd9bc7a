"""What every experiment's `run(ctx)` receives: the run's config, folder, tracker and mesh, and the pieces that
make its stages line up: the task and tokenizer, named random streams, the step ledger and the results table.

An experiment is a sequence of named stages (sft, reward model, ppo, judge, ...). Each stage declares how many
steps it takes in the ledger, which gives it the next range of the run's global step count (W&B needs steps
that only grow, and checkpoint numbers are global steps), a checkpoint folder of its own and a tracker whose
`train/` metrics land in the stage's dashboard section. Random draws come from streams named after what they
are for, so adding a stage or a draw does not shift any other stage's randomness.
"""

from __future__ import annotations

import resource
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

    from oversight.config import Config
    from oversight.models import ModelConfig
    from oversight.tasks.base import Problem, Task


def stable_seed(*parts) -> int:
    """A 32-bit seed that depends only on `parts` (not on Python's per-process string hashing)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


class StepLedger:
    """The global step range of each stage, in the order the stages are declared: a stage's steps follow those
    of every stage declared before it. Declaring a stage again (a resumed run, a stage restored instead of
    retrained) returns the same range; declaring it with another length is an error."""

    def __init__(self) -> None:
        self._ranges: dict[str, tuple[int, int]] = {}
        self._next = 0

    def declare(self, name: str, steps: int) -> int:
        """The global step before the stage's first step (its `step_offset`)."""
        if steps < 0:
            raise ValueError(f"stage {name!r}: steps={steps} must be >= 0")
        if name in self._ranges:
            start, n = self._ranges[name]
            if n != steps:
                raise ValueError(f"stage {name!r} declared with {steps} steps, earlier with {n}")
            return start
        self._ranges[name] = (self._next, steps)
        self._next += steps
        return self._ranges[name][0]


class Results:
    """The run's results table: one row per measured quantity (metric, value, ci_low, ci_high, n, and the
    columns that say what was measured). Rows carry the run's `common` columns (task, difficulty) unless a
    row sets them itself."""

    def __init__(self, common: dict[str, Any] | None = None) -> None:
        self.common = dict(common or {})
        self.rows: list[dict[str, Any]] = []

    def add(self, *rows: dict[str, Any]) -> None:
        self.rows += [{**row, **{k: v for k, v in self.common.items() if k not in row}} for row in rows]

    def value(self, metric: str, **match) -> dict[str, Any]:
        """The last row named `metric` whose columns equal `match`."""
        found = [
            r for r in self.rows if r["metric"] == metric and all(r.get(k) == v for k, v in match.items())
        ]
        if not found:
            raise KeyError(f"no results row {metric!r} with {match}")
        return found[-1]

    def write(self, tracker, summary_sections: tuple[str, ...] = ()) -> dict[str, Any]:
        """Send the table to the tracker, and as the run's summary the last value of every metric whose section
        (the part before the first '/') is in `summary_sections`. Returns that summary."""
        tracker.table("results", self.rows)
        summary = {
            r["metric"]: r["value"] for r in self.rows if r["metric"].split("/")[0] in summary_sections
        }
        if summary:
            tracker.summary(summary)
        return summary


class StageTracker:
    """Passes every call through, renaming metric prefixes (e.g. the shared loop's `train/` to `rm/`), so the
    stages of one run land in separate dashboard sections."""

    def __init__(self, tracker, prefixes: dict[str, str]):
        self.tracker, self.prefixes = tracker, prefixes

    def _rename(self, key: str) -> str:
        for old, new in self.prefixes.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.tracker.log({self._rename(k): v for k, v in metrics.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.tracker.summary(values)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.tracker.table(name, rows)

    def finish(self) -> None:  # the owner of the wrapped tracker finishes it
        pass


@dataclass
class RunContext:
    """What an experiment's `run` receives: the validated config, its options, and the run's folder, tracker
    and mesh; the task, tokenizer, random streams, step ledger and results table are built from them."""

    cfg: Config
    options: Any  # the experiment's own options dataclass
    run_dir: Path
    tracker: Any
    mesh: jax.sharding.Mesh
    ledger: StepLedger = field(default_factory=StepLedger)

    @property
    def rules(self) -> dict[str, list[str]]:
        return self.cfg.mesh.rules

    @property
    def writes_files(self) -> bool:
        """Whether this process writes the run folder's own files (process 0 of a multi-host job; the tracker
        and checkpoints handle their own). Every process still computes what goes in them."""
        from oversight.tracking.run_info import process_index

        return process_index() == 0

    def model_config(self, model: ModelConfig | None = None, role: str = "model") -> ModelConfig:
        """`model` (default: the run's) as this run builds it: a checkpoint's own architecture, checked against
        the tokenizer. What was built goes in the run's summary (and W&B) under `<role>/`: config.yaml shows
        the settings given, which for a checkpoint are not the architecture."""
        from oversight.models import build_model_config

        built = build_model_config(model or self.cfg.model, self.tokenizer)
        arch = (
            "family",
            "n_layers",
            "d_model",
            "n_heads",
            "kv_heads",
            "mlp_width",
            "vocab_size",
            "max_seq_len",
        )
        self.tracker.summary(
            {f"{role}/{k}": getattr(built, k) for k in arch}
            | {f"{role}/num_params": built.num_params(), f"{role}/checkpoint": built.checkpoint or ""}
        )
        return built

    @cached_property
    def tokenizer(self):
        from oversight.data.tokenizer import load_tokenizer

        return load_tokenizer(self.cfg.tokenizer)

    @cached_property
    def task(self) -> Task:
        from oversight.tasks import get_task

        return get_task(self.cfg.task.name, **self.cfg.task.options)

    @cached_property
    def results(self) -> Results:
        return Results({"task": self.cfg.task.name, "difficulty": self.cfg.task.difficulty})

    def splits(self, difficulty: int | None = None) -> tuple[list[Problem], list[Problem]]:
        """(train, held-out) problems of `cfg.task` (at `difficulty`, default the task's); no held-out prompt
        was seen in training."""
        d = self.cfg.task.difficulty if difficulty is None else difficulty
        train = self.task.sample(self.cfg.task.num_train, d, seed=self.seed("task/train"))
        seen = {p.prompt for p in train}
        held = self.task.sample(self.cfg.task.num_eval, d, seed=self.seed("task/held_out"))
        return train, [p for p in held if p.prompt not in seen]

    def seed(self, stream: str) -> int:
        """The integer seed of the named random stream (the same name gives the same seed in every run with
        the same `seed`)."""
        return stable_seed(self.cfg.seed, stream)

    def key(self, stream: str) -> jax.Array:
        """A JAX key of the named random stream."""
        import jax

        return jax.random.key(self.seed(stream))

    def stage(self, name: str, steps: int, prefix: str | None = None) -> Stage:
        """Declare the next stage: its global step range, checkpoint folder `checkpoints/<name>` and a tracker
        that logs the shared loop's `train/` metrics as `<prefix>/` (default: the name)."""
        offset = self.ledger.declare(name, steps)
        section = (prefix or name.replace("/", "_")) + "/"
        return Stage(
            name,
            steps,
            offset,
            self.run_dir / "checkpoints" / name,
            StageTracker(self.tracker, {"train/": section}),
        )


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (`ru_maxrss`: kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    # Global step before this stage's first step.
    offset: int
    checkpoint_dir: Path
    tracker: StageTracker
    # When it was declared (just before it runs), on the monotonic clock.
    started: float = field(default_factory=time.monotonic)

    def finish(self) -> None:
        """Record in the run summary the process's peak resident memory so far as `<name>/peak_rss_mib` and
        the seconds since the stage was declared as `<name>/wall_s` ('/' in the name as '_'); whoever runs the
        stage calls it once the stage's work is done."""
        section = self.name.replace("/", "_")
        self.tracker.summary(
            {f"{section}/peak_rss_mib": peak_rss_mib(), f"{section}/wall_s": time.monotonic() - self.started}
        )
