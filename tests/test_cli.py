"""End to end through the `oversight` command, as a user runs it: run folders, kill-and-resume, sweeps."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import orbax.checkpoint as ocp
import pytest
from nbclient import NotebookClient

import oversight

REPO = Path(oversight.__file__).resolve().parents[1]
# A small but real SFT run: tiny model, a few dozen steps.
SMALL = [
    "experiment=sft",
    "task.num_train=256",
    "task.num_eval=16",
    "experiment.eval_samples=8",
    "experiment.max_new_tokens=48",
    "train.batch_size=16",
    "train.log_every=2",
    "train.eval_every=10",
    "model.d_model=64",
    "model.n_layers=1",
]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as on a user's laptop (conftest forces 8 for the sharding tests)
    env["WANDB_MODE"] = "offline"
    env["WANDB_SILENT"] = "true"
    return env


def _command(*args):
    flags = [a for a in args if a.startswith("-")]  # argparse wants flags before the overrides
    return [sys.executable, "-m", "oversight.cli", *flags, *SMALL, *(a for a in args if a not in flags)]


def _call(command, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _run(*args, timeout=300):
    proc = _call(_command(*args), timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in rows]


def _final_state(run_dir: Path, step: int):
    return ocp.StandardCheckpointer().restore(
        (run_dir / "checkpoints" / "sft" / str(step) / "state").absolute()
    )


def test_a_run_writes_a_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    _run("train.steps=6", "tracker=offline", f"hydra.run.dir={run_dir}")
    for name in ("config.yaml", "metrics.jsonl", "results.jsonl", "run_info.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "sft" / "6").is_dir()
    assert list((run_dir / "wandb").glob("offline-run-*")), "no W&B offline run"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and info["packages"]["jax"]
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    accuracy = next(r for r in results if r["metric"] == "sft/gold_accuracy")
    assert accuracy["n"] == 8 and accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
    steps = [r["step"] for r in _metrics(run_dir) if "train/loss" in r]
    assert steps == [2, 4, 6]


def test_killed_run_resumes_to_bit_identical_parameters_and_metrics(tmp_path):
    args = ["train.steps=40", "train.checkpoint_every=10", "tracker=disabled"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(*args, f"hydra.run.dir={whole}")

    proc = subprocess.Popen(
        _command(*args, f"hydra.run.dir={killed}"),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while (
        not (killed / "checkpoints" / "sft" / "10").is_dir()
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "sft" / "40").exists(), "the run finished before it was killed"

    _run(*args, f"hydra.run.dir={killed}")
    assert _metrics(killed) == _metrics(whole)
    a, b = _final_state(whole, 40), _final_state(killed, 40)
    leaves_a, leaves_b = jax_leaves(a), jax_leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sweep_over_two_seeds_writes_two_runs_the_notebook_reads(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    out = _run("-m", "seed=0,1", "train.steps=4", "tracker=offline", f"hydra.sweep.dir={sweep}").stdout
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.jsonl"))
    assert runs == ["0", "1"]
    # The sweep ends with its summary over both seeds.
    summary = out[out.index("Sweep summary over seeds") :]
    assert "2 runs (seed 0, 1)" in summary and "| `sft/gold_accuracy`" in summary
    # Each job finished its own W&B run: one offline run folder per job, none shared.
    assert all(len(list((sweep / r / "wandb").glob("offline-run-*"))) == 1 for r in runs)

    monkeypatch.setenv("OVERSIGHT_RUNS", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "print(sorted(metrics['run'].unique()), sorted(configs['seed'].astype(int).tolist()))"
        )
    )
    NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert printed.strip() == "['0', '1'] [0, 1]"


def test_unknown_key_on_the_command_line_fails_naming_it():
    proc = _call([sys.executable, "-m", "oversight.cli", "train.stpes=3"], timeout=120)
    assert proc.returncode != 0
    assert "stpes" in proc.stderr
    # Appended with `+` (as Hydra's own message suggests) it is refused too, with the closest key.
    run_dir = REPO / "runs" / "refused_by_test"
    proc = _call(
        [sys.executable, "-m", "oversight.cli", "+train.stpes=3", f"hydra.run.dir={run_dir}"], timeout=120
    )
    assert proc.returncode != 0
    assert not run_dir.exists()  # the folder Hydra made for the refused run is gone
    assert proc.stderr.strip().splitlines()[-1] == (
        "config error: train.stpes is not a setting of TrainConfig; did you mean train.steps?"
    )


def test_version_names_the_package_its_commit_and_libraries():
    out = _call([sys.executable, "-m", "oversight.cli", "--version"], timeout=60).stdout
    assert out.startswith(f"oversight {oversight.__version__} (") and " jax " in out and " flax " in out


def test_list_experiments():
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", "--list-experiments"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == sorted(names) and {"sft", "rlhf"} <= set(names)


@pytest.fixture(autouse=True)
def _no_stray_runs_in_the_repo():
    before = set(REPO.glob("runs/*")) | set(REPO.glob("multirun/*"))
    yield
    assert set(REPO.glob("runs/*")) | set(REPO.glob("multirun/*")) == before


_REFAULT = """
import ctypes, resource, sys, threading
from oversight.cli import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "tuned" else "default")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def work():  # a 200 MB buffer written and freed by a non-main thread, as XLA's workers do every step
    size = 200 * 2**20
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)

for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = threading.Thread(target=work)
    t.start()
    t.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_keep_freed_memory_stops_large_buffers_being_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {}
    for mode in ("default", "tuned"):
        out = subprocess.run(
            [sys.executable, "-c", _REFAULT, mode], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        runs[mode] = (out[0], int(out[1]))
    assert runs["tuned"][0] == "True"
    # 200 MB is 51,200 pages: the default allocator faults every one in again, the tuned one none of them
    assert runs["default"][1] > 40_000 and runs["tuned"][1] < 1_000, runs


def test_resuming_a_run_folder_with_another_config_fails_naming_the_changes(tmp_path):
    run_dir = tmp_path / "run"
    _run("train.steps=4", "tracker=disabled", f"hydra.run.dir={run_dir}")
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    assert run_dir / ".hydra" / "overrides.yaml" in files  # what `oversight report` rebuilds the command from
    saved = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    proc = _call(_command("train.steps=4", "seed=3", "tracker=disabled", f"hydra.run.dir={run_dir}"))
    assert proc.returncode != 0
    assert "seed: 0 in the folder, 3 now" in proc.stderr and "another hydra.run.dir" in proc.stderr
    # Nothing in the folder was touched, Hydra's record of the job (.hydra/) included.
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == saved
    # Where results are logged may change: the same run resumes (and has nothing left to do).
    _run("train.steps=4", "tracker=offline", f"hydra.run.dir={run_dir}")


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error a user sees: a non-zero exit, no traceback, the message as the last line of stderr."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    missing = tmp_path / "no_such_model"
    line = _one_line_error(_call(_command("model=hf", f"model.checkpoint={missing}", "tracker=disabled",
                                          f"hydra.run.dir={tmp_path / 'a'}")))  # fmt: skip
    assert line.startswith(
        f"error: checkpoint folder {missing} does not exist (nor is it a named pretrained model: "
    )
    assert "smollm2-135m-instruct (SmolLM2-135M-Instruct" in line  # what a name would have been
    # A damaged checkpoint: resuming names it and what to do.
    run_dir = tmp_path / "run"
    _run("train.steps=4", "train.checkpoint_every=2", "tracker=disabled", f"hydra.run.dir={run_dir}")
    for f in (run_dir / "checkpoints" / "sft" / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    again = _command(
        "train.steps=4", "train.checkpoint_every=2", "tracker=disabled", f"hydra.run.dir={run_dir}"
    )
    line = _one_line_error(_call(again))
    assert line.startswith(f"error: {run_dir / 'checkpoints' / 'sft' / '4'}: cannot restore this checkpoint")
    assert "Traceback" in _call([*again[:3], "--debug", *again[3:]]).stderr  # --debug shows where it failed


def test_help_lists_the_experiments_and_every_setting_with_its_range_and_description():
    out = _call([sys.executable, "-m", "oversight.cli", "--help", "experiment=rlhf", "experiment.ppo.kl_coef=0.05"],
                timeout=120).stdout  # fmt: skip
    assert "powered by Hydra" not in out and "--list-experiments" in out
    assert "\n  sft                Supervised fine-tuning" in out
    lines = out.splitlines()
    assert "  train.batch_size = 32  [>= 1]  Sequences per step (global, across all devices)." in lines
    assert any(
        line.startswith("  experiment.ppo.kl_coef = 0.05  [>= 0]  Initial KL coefficient") for line in lines
    )
    assert any(line.startswith("  model.family = gpt2  [one of gpt2, llama]") for line in lines)
