"""Run folders into pandas, for notebooks: every folder holding a `metrics.jsonl` counts as a run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from oversight.tracking.jsonl import METRICS_FILE, read_jsonl

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.jsonl"
Paths = str | os.PathLike | Iterable[str | os.PathLike]


def find_runs(paths_or_root: Paths) -> dict[str, Path]:
    """Maps run name to run folder, for every run folder under the given folders (or the folders themselves).

    A run's name is its path relative to the folder(s) given, e.g. `3` or `lr=0.1,seed=0` inside
    a Hydra sweep folder; a folder given that is itself a run is named after itself.
    """
    roots = (
        [Path(paths_or_root)]
        if isinstance(paths_or_root, str | os.PathLike)
        else list(map(Path, paths_or_root))
    )
    folders = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"no such run folder: {root}")
        folders += [p.parent for p in sorted(root.rglob(METRICS_FILE))]
    if not folders:
        raise FileNotFoundError(f"no run folders (with {METRICS_FILE}) under {', '.join(map(str, roots))}")
    base = Path(os.path.commonpath([r.resolve() for r in roots]))
    if any(folder.resolve() == base for folder in folders):
        base = base.parent
    return {folder.resolve().relative_to(base).as_posix(): folder for folder in folders}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            # Lists become JSON strings so the column stays hashable for groupby and comparisons.
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _configs(runs: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for run, folder in runs.items():
        path = folder / CONFIG_FILE
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
        rows.append({"run": run, **_flatten(config)})
    return pd.DataFrame(rows)


def _with_configs(frames: list[pd.DataFrame], runs: dict[str, Path], leading: list[str]) -> pd.DataFrame:
    table = pd.concat(frames, ignore_index=True)
    # `leading` columns come first and exist even when nothing was logged yet.
    table = table.reindex(columns=[*leading, *(c for c in table.columns if c not in leading)])
    configs = _configs(runs)
    clashes = sorted((set(table.columns) & set(configs.columns)) - {"run"})
    if clashes:
        raise ValueError(f"config keys {clashes} clash with logged columns of the same name")
    return table.merge(configs, on="run", how="left")


def load_configs(paths_or_root: Paths) -> pd.DataFrame:
    """One row per run: `run` and its resolved config from `config.yaml`, flattened to dotted columns."""
    return _configs(find_runs(paths_or_root))


def load_runs(paths_or_root: Paths) -> pd.DataFrame:
    """Step metrics of every run: a row per log call; columns `run`, `step`, `time`, metrics, config."""
    runs = find_runs(paths_or_root)
    frames = [
        pd.DataFrame(list(read_jsonl(folder / METRICS_FILE))).assign(run=run) for run, folder in runs.items()
    ]
    return _with_configs(frames, runs, ["run", "step", "time"])


def load_results(paths_or_root: Paths) -> pd.DataFrame:
    """Rows of every run's `results.jsonl` with `run` and the config; empty if no run has results."""
    runs = find_runs(paths_or_root)
    frames = [
        pd.DataFrame(list(read_jsonl(folder / RESULTS_FILE))).assign(run=run)
        for run, folder in runs.items()
        if (folder / RESULTS_FILE).exists()
    ]
    return _with_configs(frames, runs, ["run"]) if frames else pd.DataFrame(columns=["run"])
