"""The scaling report (bench/scaling.py): the sharded steps agree with the 1-device step on a reduced set of
layouts, the comparison catches a disagreement, and the experiments mode runs the command a user would."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _call_scaling(*args, timeout=300) -> subprocess.CompletedProcess:
    command = [sys.executable, "bench/scaling.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _scaling(*args) -> tuple[list[dict], subprocess.CompletedProcess]:
    """bench/scaling.py's JSON records (it must succeed), and the process for its other output."""
    proc = _call_scaling(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _records(proc.stdout), proc


def test_every_layout_of_each_device_count_and_the_reference_first(bench_script):
    scaling = bench_script("scaling")
    assert set(scaling.layouts(4)) == {(4, 1, 1), (1, 4, 1), (1, 1, 4), (2, 2, 1), (2, 1, 2), (1, 2, 2)}
    assert len(scaling.layouts(8)) == 10 and all(np.prod(x) == 8 for x in scaling.layouts(8))
    assert scaling.layouts(1) == [(1, 1, 1)]
    plan = scaling.make_plan([1, 2, 4, 8])
    assert list(plan) == [1, 2, 4, 8] and sum(map(len, plan.values())) == 1 + 3 + 6 + 10
    # Chosen layouts still get the 1-device reference, run first.
    assert scaling.make_plan([1, 2], scaling.parse_layouts("2x2x2,1x2x1")) == {
        1: [(1, 1, 1)],
        2: [(1, 2, 1)],
        8: [(2, 2, 2)],
    }
    with pytest.raises(Exception, match="DATAxFSDPxTENSOR"):
        scaling.parse_layouts("2x2")


def test_comparison_reports_the_largest_difference_per_part(bench_script):
    scaling = bench_script("scaling")
    reference = {
        "__loss__": np.float64(2.0),
        "[0]['w'].value": np.zeros((3, 4), np.float32),
        "[1]['mu']['w'].value": np.zeros((3, 4), np.float32),
    }
    state = {k: v.copy() for k, v in reference.items() if k != "__loss__"}
    state["[0]['w'].value"][1, 2] = -3e-4
    state["[1]['mu']['w'].value"][0, 0] = 2e-6
    err = scaling.compare(2.5, state, reference)
    assert err["loss"] == pytest.approx(0.5)
    assert err["params"] == pytest.approx(3e-4) and err["opt_state"] == pytest.approx(2e-6)
    del state["[1]['mu']['w'].value"]
    with pytest.raises(ValueError, match="state paths differ"):
        scaling.compare(2.0, state, reference)


def test_disagreement_recompilation_and_missing_layouts_are_failures(bench_script):
    scaling = bench_script("scaling")
    plan = {1: [(1, 1, 1)], 2: [(2, 1, 1)]}
    base = {"loss_abs_err": 0.0, "params_max_abs_err": 0.0, "opt_state_max_abs_err": 0.0, "agree": True}
    records = [
        {**base, "step": "sft", "layout": "1x1x1", "recompiled": False},
        {**base, "step": "ppo", "layout": "1x1x1", "recompiled": "recompiled after warm-up (1 -> 2)"},
        {
            **base,
            "step": "sft",
            "layout": "2x1x1",
            "recompiled": False,
            "agree": False,
            "params_max_abs_err": 1e-3,
        },
    ]
    problems = scaling.failures(records, plan)
    assert problems == [
        "ppo 1x1x1: recompiled after warm-up (1 -> 2)",
        "sft 2x1x1: differs from 1 device (loss 0.00e+00, params 1.00e-03, optimizer state 0.00e+00)",
        "ppo 2x1x1: no result",
    ]
    assert scaling.failures(records[:1], {1: [(1, 1, 1)]}) == ["ppo 1x1x1: no result"]


def test_sharded_sft_and_ppo_steps_agree_with_one_device():
    """The mesh part end to end on the smoke model: the 1-device reference and the 8-device 2x2x2 layout (every
    mesh axis in use), each in its own worker process. This test process forces 8 devices (conftest); the
    workers must replace that with their own count."""
    records, proc = _scaling("--smoke", "--layouts", "2x2x2", "--reps", "2", "--markdown")
    assert records[0]["layouts"] == {"1": ["1x1x1"], "8": ["2x2x2"]}
    steps = {(r["step"], r["layout"]): r for r in records if "step" in r}
    assert set(steps) == {(s, l) for s in ("sft", "ppo") for l in ("1x1x1", "2x2x2")}
    for r in steps.values():
        assert r["agree"] and r["recompiled"] is False, r
        assert max(r["loss_abs_err"], r["params_max_abs_err"], r["opt_state_max_abs_err"]) <= 1e-5
        assert len(r["seconds_all"]) == 2 and r["seconds_median"] > 0
    assert steps[("sft", "2x2x2")]["devices"] == 8 and not steps[("sft", "2x2x2")]["reference"]
    # Same losses to rounding, and a PPO update that moves the parameters by more than the tolerance, so
    # agreeing within it is a real check.
    assert steps[("sft", "2x2x2")]["loss"] == pytest.approx(steps[("sft", "1x1x1")]["loss"], abs=1e-5)
    assert steps[("ppo", "2x2x2")]["params_max_update"] > 1e-5
    assert steps[("ppo", "2x2x2")]["work"]["optimizer_steps"] == 4
    summary = records[-1]
    assert summary["summary"] == "mesh" and summary["all_agree"] and summary["layouts"] == 2
    assert "| 8 | 2 × 2 × 2 |" in proc.stderr


def test_experiments_mode_builds_the_users_command(tmp_path, bench_script):
    scaling = bench_script("scaling")
    from oversight.registry import available_experiments

    assert scaling.list_experiments() == sorted(available_experiments())
    command = scaling.experiment_command("sft", tmp_path / "run", ["train.steps=2"])
    assert command == [
        sys.executable,
        "-m",
        "oversight.cli",
        "experiment=sft",
        "train.steps=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = _call_scaling("--experiments", "--only", "sft,no_such", timeout=120)
    assert proc.returncode != 0 and "unknown experiment(s) ['no_such']" in proc.stderr


@pytest.mark.slow
def test_experiments_mode_times_a_tiny_run():
    tiny = [
        "tracker=disabled",
        "task.num_train=128",
        "model.d_model=32",
        "model.n_layers=1",
        "train.steps=2",
        "train.batch_size=16",
        "experiment.eval_samples=8",
        "experiment.max_new_tokens=48",
    ]
    overrides = [arg for o in tiny for arg in ("--override", o)]
    records, _ = _scaling("--experiments", "--only", "sft", *overrides)
    assert records[0]["experiments"] == ["sft"] and records[0]["overrides"] == tiny
    (run,) = [r for r in records if "experiment" in r]
    assert run["returncode"] == 0 and run["summary_written"] and run["wall_s"] > 0
    assert records[-1] == {**records[-1], "summary": "experiments", "failed": []}
