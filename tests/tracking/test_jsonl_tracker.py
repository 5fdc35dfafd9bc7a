import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from oversight.tracking import JsonlTracker
from oversight.tracking.jsonl import read_jsonl


def _rows(run_dir):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_jsonl(run_dir / "metrics.jsonl")]


def _train(run_dir, steps, resume_step=None):
    tracker = JsonlTracker(run_dir, resume_step=resume_step)
    for step in steps:
        tracker.log({"train/loss": 1.0 / (step + 1), "eval/acc": step / 10}, step)
    return tracker


def test_log_writes_one_json_object_per_call_with_python_floats(tmp_path):
    tracker = JsonlTracker(tmp_path)
    tracker.log(
        {"train/loss": np.float32(0.5), "train/lr": jnp.asarray(2e-4), "train/tokens": 3}, step=np.int64(7)
    )
    tracker.log({"eval/acc": 0.25}, step=8)
    tracker.finish()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {"step", "time", "train/loss", "train/lr", "train/tokens"}
    assert first["step"] == 7 and isinstance(first["time"], float)
    assert (
        first["train/loss"] == 0.5
        and first["train/lr"] == pytest.approx(2e-4)
        and first["train/tokens"] == 3.0
    )
    assert json.loads(lines[1])["eval/acc"] == 0.25


def test_metric_names_need_a_section_prefix(tmp_path):
    with pytest.raises(ValueError, match="'loss'"):
        JsonlTracker(tmp_path).log({"loss": 1.0}, step=0)


def test_killed_and_resumed_run_ends_with_the_same_metrics_as_an_uninterrupted_one(tmp_path):
    _train(tmp_path / "whole", range(10)).finish()

    killed = tmp_path / "killed"
    _train(killed, range(8))  # killed after step 7, never finished ...
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "train/lo')  # ... in the middle of writing step 8
    resumed = _train(killed, range(5, 10), resume_step=4)  # restored from the checkpoint at step 4
    resumed.finish()

    assert resumed.logged_through == 7
    assert _rows(killed) == _rows(tmp_path / "whole")
    assert [p.name for p in killed.iterdir()] == ["metrics.jsonl"]  # no temp file left behind


def test_resume_keeps_the_summary_and_a_fresh_start_clears_old_files(tmp_path):
    tracker = _train(tmp_path, range(3))
    tracker.summary({"eval/best_acc": np.float64(0.5), "tokens": np.int32(12)})
    tracker.finish()

    resumed = JsonlTracker(tmp_path, resume_step=2)
    resumed.summary({"eval/final_acc": 0.75})
    resumed.finish()
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "eval/best_acc": 0.5,
        "tokens": 12,
        "eval/final_acc": 0.75,
    }

    JsonlTracker(tmp_path).finish()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert not (tmp_path / "summary.json").exists()


def test_table_writes_one_row_per_line_and_replaces_an_earlier_table(tmp_path):
    tracker = JsonlTracker(tmp_path)
    tracker.table("results", [{"quantity": "G", "value": 0.1}])
    tracker.table(
        "results", [{"quantity": "G", "value": np.float32(0.5), "n": np.int64(200)}, {"quantity": "D"}]
    )
    tracker.finish()
    assert list(read_jsonl(tmp_path / "results.jsonl")) == [
        {"quantity": "G", "value": 0.5, "n": 200},
        {"quantity": "D"},
    ]


@pytest.mark.parametrize("name", ["metrics", "../results", "a/b", ""])
def test_table_names_that_would_clobber_or_escape_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="table name"):
        JsonlTracker(tmp_path).table(name, [])


def test_a_damaged_line_before_the_end_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        list(read_jsonl(path))


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null_in_strict_json(tmp_path):
    tracker = JsonlTracker(tmp_path)
    tracker.log({"rl/liar_reward": float("nan"), "train/loss": 0.5}, step=1)
    tracker.summary({"accuracy": np.float32("nan"), "ratio": float("inf"), "n": 3})
    tracker.table("results", [{"metric": "m", "value": np.nan, "ci_low": None, "n": 0}])
    row = _strict((tmp_path / "metrics.jsonl").read_text())
    assert row["rl/liar_reward"] is None and row["train/loss"] == 0.5
    assert _strict((tmp_path / "summary.json").read_text()) == {"accuracy": None, "ratio": None, "n": 3}
    assert _strict((tmp_path / "results.jsonl").read_text())["value"] is None


def test_files_get_the_mode_a_new_file_gets_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tracker = JsonlTracker(tmp_path)
        tracker.summary({"a": 1})
        tracker.table("results", [{"metric": "m", "value": 1.0}])
    finally:
        os.umask(old)
    for name in ("summary.json", "results.jsonl", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
