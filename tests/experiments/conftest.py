"""Tiny experiment runs in a subprocess: a `gdc_gap` run and a `critique_assist` run under one root, shared by
their tests and the critique notebook's test (session-scoped: each runs once per test process), and the runner
for other experiments' tiny runs."""

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


@pytest.fixture
def execute_notebook(tmp_path, monkeypatch):
    """`execute_notebook(name, runs, last_cell) -> (printed, figures)`: runs `notebooks/<name>` on the run
    folders under `runs` with `last_cell` appended (in a kernel that imports this checkout), and returns what
    that cell printed and the number of figures the notebook drew."""

    def execute(name: str, runs: Path, last_cell: str) -> tuple[str, int]:
        import nbformat
        from nbclient import NotebookClient

        monkeypatch.setenv("OVERSIGHT_RUNS", str(runs))
        monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(last_cell))
        NotebookClient(
            nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        figures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        return printed, len(figures)

    return execute


@pytest.fixture(scope="session")
def run_experiment():
    """`run_experiment(run_dir, *overrides)`: one tiny experiment run in a subprocess, as the CLI runs it."""
    return _run


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
