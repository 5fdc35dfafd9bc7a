"""Two processes (4 CPU devices each, `jax.distributed` over localhost) compute what one process with 8 devices
computes: an SFT step and a PPO update phase equal within 1e-5; a checkpoint written by 2 processes restores in
1 process and the reverse; only process 0 writes the run folder's tracker files."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(out: Path, n: int, *extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(REPO)}
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), str(n), str(i), port, *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    _launch(one, 1)
    _launch(two, 2)
    return one, two


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_two_processes_compute_the_sft_steps_and_the_ppo_update_of_one(runs):
    one, two = runs
    ref, got, other = _load(one / "p0.npz"), _load(two / "p0.npz"), _load(two / "p1.npz")
    assert set(ref) == set(got) == set(other)
    moved = [k for k in ref if k.startswith("sft_") and k != "sft_losses"]
    assert len(moved) > 10
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
        np.testing.assert_array_equal(got[k], other[k], err_msg=k)  # both processes hold the same result
    assert ref["sft_losses"][1] < ref["sft_losses"][0]  # the steps really trained


def test_a_checkpoint_moves_between_two_processes_and_one(runs, tmp_path):
    one, two = runs
    for name, processes, written in (("in_one", 1, two), ("in_two", 2, one)):
        (tmp_path / name).mkdir()
        _launch(tmp_path / name, processes, str(written / "checkpoint"))
        restored, saved = _load(tmp_path / name / "restored_p0.npz"), _load(written / "p0.npz")
        assert int(restored.pop("step")) == 2
        assert len(restored) > 10  # the whole train state: model and optimizer
        for k in restored:
            np.testing.assert_array_equal(restored[k], saved[k], err_msg=f"{name}: {k}")


def test_only_process_zero_writes_the_tracker_files_and_the_experiments_own_files(runs):
    _, two = runs
    assert (two / "run_p0" / "metrics.jsonl").read_text().count("\n") == 1
    assert not (two / "run_p1").exists() or not any((two / "run_p1").iterdir())
    assert [(two / f"p{i}_writes_files.txt").read_text() for i in (0, 1)] == ["True", "False"]


SFT = ["experiment=sft", "train.steps=10", "train.log_every=5", "task.num_train=256", "task.num_eval=16",
       "experiment.eval_samples=8", "model.d_model=64", "model.n_layers=1", "tracker=disabled"]  # fmt: skip


def _oversight(devices: int, *args: str) -> subprocess.Popen:
    env = dict(os.environ) | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "oversight.cli", *SFT, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        log = p.communicate(timeout=300)[0]
        assert p.returncode == 0, log[-3000:]


def _losses(run_dir: Path) -> list[float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r] + [r["value"] for r in results]


def test_the_command_line_recipe_two_processes_by_hand_run_the_sft_experiment_of_one(tmp_path):
    """docs/usage.md's recipe: the same command in each process with mesh.distributed=true and the coordinator,
    process count and index; one run folder, written by process 0, with the results of one 8-device process."""
    port = _free_port()
    two = [
        _oversight(
            4,
            "mesh.distributed=true",
            f"mesh.coordinator=localhost:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={i}",
            f"hydra.run.dir={tmp_path / 'two'}",
        )  # fmt: skip
        for i in range(2)
    ]
    _finish(*two)
    _finish(_oversight(8, f"hydra.run.dir={tmp_path / 'one'}"))
    got, ref = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(got) == len(ref) == 4  # two logged losses, gold accuracy and held-out loss
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
