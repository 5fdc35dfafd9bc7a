import sys

import pytest

from oversight.tracking import CompositeTracker, TensorBoardTracker, TrackerConfig, open_tracker
from oversight.tracking.jsonl import read_jsonl


class Recorder:
    def __init__(self, fail_on_finish=False):
        self.calls = []
        self.fail_on_finish = fail_on_finish

    def log(self, metrics, step):
        self.calls.append(("log", metrics, step))

    def summary(self, values):
        self.calls.append(("summary", values))

    def table(self, name, rows):
        self.calls.append(("table", name, rows))

    def finish(self):
        self.calls.append(("finish",))
        if self.fail_on_finish:
            raise OSError("disk full")


def test_every_call_reaches_every_backend():
    backends = [Recorder(), Recorder()]
    tracker = CompositeTracker(backends)
    tracker.log({"train/loss": 1.0}, 3)
    tracker.summary({"eval/acc": 0.5})
    tracker.table("results", [{"quantity": "G"}])
    tracker.finish()
    expected = [
        ("log", {"train/loss": 1.0}, 3),
        ("summary", {"eval/acc": 0.5}),
        ("table", "results", [{"quantity": "G"}]),
        ("finish",),
    ]
    assert backends[0].calls == backends[1].calls == expected


def test_a_failing_backend_does_not_keep_the_others_from_finishing():
    backends = [Recorder(fail_on_finish=True), Recorder()]
    with pytest.raises(OSError, match="disk full"):
        CompositeTracker(backends).finish()
    assert backends[1].calls == [("finish",)]


def test_unknown_wandb_mode_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'ofline'"):
        TrackerConfig(wandb_mode="ofline")


def test_tensorboard_backend_writes_event_files_next_to_the_jsonl(tmp_path):
    cfg = TrackerConfig(wandb_mode="disabled", tensorboard=True)
    tracker = open_tracker(cfg, tmp_path, config={}, name="job", group="exp", job_type="sft", tags=[])
    tracker.log({"train/loss": 1.0}, 0)
    tracker.summary({"eval/acc": 0.5})
    tracker.table("results", [{"quantity": "G", "value": 0.5}])
    tracker.finish()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert [row["train/loss"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [1.0]


def test_tensorboard_without_tensorboardx_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        TensorBoardTracker(tmp_path)
