"""A tiny `gdc_gap` run and a tiny `critique_assist` run under one root, shared by their tests and the
critique notebook's test (session-scoped: each runs once per test process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import oversight

REPO = Path(oversight.__file__).resolve().parents[1]

TINY = [
    "tracker=disabled",
    "task.num_train=128",
    "model.d_model=32",
    "model.n_layers=1",
    "train.steps=12",
    "train.batch_size=16",
    "train.eval_every=12",
    "train.checkpoint_every=12",
]


def _run(run_dir: Path, *overrides: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=dict(os.environ, XLA_FLAGS=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="session")
def critique_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("critique_runs")
    _run(
        root / "assist",
        "experiment=critique_assist",
        "task=addition",
        "task.num_eval=48",
        "experiment.responses_per_set=16",
    )
    _run(
        root / "gdc",
        "experiment=gdc_gap",
        "task=addition",
        "task.num_eval=48",
        "experiment.eval_responses=32",
        "experiment.bon_problems=8",
        "experiment.bon_n=4",
    )
    return root
