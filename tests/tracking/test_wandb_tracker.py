import json

import pytest
import wandb

from oversight.tracking import TrackerConfig, WandbTracker, open_tracker
from oversight.tracking import wandb_tracker as wandb_tracker_module
from oversight.tracking.jsonl import read_jsonl

OPEN_ARGS = dict(
    config={"seed": 0, "model": {"d": 8}}, name="job", group="exp", job_type="ppo", tags=["method:ppo"]
)


class FakeRun:
    """Stands in for a W&B run to record what the backend sends."""

    def __init__(self, **init_kwargs):
        self.init_kwargs = init_kwargs
        self.steps: list[int] = []
        self.summary: dict = {}
        self.finished = False

    def log(self, data, step=None, commit=None):
        if step is not None:
            self.steps.append(step)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_runs(monkeypatch):
    runs = []

    def init(**kwargs):
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    return runs


def _attempt(run_dir, steps, resume_step=None):
    tracker = open_tracker(TrackerConfig(), run_dir, resume_step=resume_step, **OPEN_ARGS)
    for step in steps:
        tracker.log({"train/loss": float(step)}, step)
    return tracker


def test_disabled_mode_logs_and_finishes_two_runs_in_a_row_in_one_process(tmp_path):
    for job in range(2):
        run_dir = tmp_path / str(job)
        tracker = open_tracker(TrackerConfig(wandb_mode="disabled"), run_dir, **OPEN_ARGS)
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.summary({"eval/acc": 0.5})
        tracker.table("results", [{"quantity": "G", "value": 0.5}])
        tracker.finish()
        assert wandb.run is None  # nothing left over for the next Hydra job
        assert len(list(read_jsonl(run_dir / "metrics.jsonl"))) == 1


def test_run_is_configured_from_the_tracker_config_and_the_job(tmp_path, fake_runs):
    cfg = TrackerConfig(
        wandb_mode="offline", wandb_project="proj", wandb_entity="team", tags=["dev", "method:ppo"]
    )
    open_tracker(cfg, tmp_path, **OPEN_ARGS).finish()

    (run,) = fake_runs
    kwargs = run.init_kwargs
    assert kwargs["mode"] == "offline" and kwargs["project"] == "proj" and kwargs["entity"] == "team"
    assert kwargs["dir"] == tmp_path and kwargs["reinit"] == "create_new" and kwargs["resume"] == "allow"
    assert (kwargs["name"], kwargs["group"], kwargs["job_type"]) == ("job", "exp", "ppo")
    assert kwargs["tags"] == ["dev", "method:ppo"]
    assert kwargs["config"] == {"seed": 0, "model": {"d": 8}}
    assert run.finished


def test_resume_continues_the_same_run_and_keeps_its_steps_increasing(tmp_path, fake_runs):
    _attempt(tmp_path, range(8))  # killed after step 7
    _attempt(tmp_path, range(5, 7), resume_step=4)  # resumed from step 4, killed again after step 6
    _attempt(tmp_path, range(6, 10), resume_step=5).finish()

    first, second, third = fake_runs
    assert first.init_kwargs["id"] == second.init_kwargs["id"] == third.init_kwargs["id"]
    assert first.steps == list(range(8))
    # W&B already holds steps up to 7, from the first attempt; it would drop them again anyway.
    assert second.steps == [] and third.steps == [8, 9]
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(10))


def test_a_fresh_start_opens_a_new_run(tmp_path, fake_runs):
    _attempt(tmp_path, range(3)).finish()
    _attempt(tmp_path, range(3)).finish()
    first, second = fake_runs
    assert first.init_kwargs["id"] != second.init_kwargs["id"]
    assert second.steps == [0, 1, 2]


def test_only_process_zero_logs(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(wandb_tracker_module, "process_index", lambda: 1)
    kwargs = dict(OPEN_ARGS, tags=[])
    WandbTracker(tmp_path, mode="offline", project="p", entity=None, **kwargs).finish()
    assert fake_runs[0].init_kwargs["mode"] == "disabled"
    assert not (tmp_path / "wandb_run.json").exists()


def test_open_tracker_on_other_processes_writes_nothing(tmp_path, fake_runs, monkeypatch):
    from oversight.tracking import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "process_index", lambda: 3)
    _attempt(tmp_path / "run", range(3)).finish()
    assert not (tmp_path / "run").exists() and fake_runs == []


def test_offline_mode_writes_each_job_into_its_run_folder_without_network(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for job in ("0", "1"):
        tracker = open_tracker(TrackerConfig(wandb_mode="offline"), tmp_path / job, **OPEN_ARGS)
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.table("results", [{"quantity": "G", "value": 0.5}])
        tracker.finish()

        run_id = json.loads((tmp_path / job / "wandb_run.json").read_text())["id"]
        (offline_run,) = (tmp_path / job / "wandb").glob(f"offline-run-*-{run_id}")
        assert (offline_run / f"run-{run_id}.wandb").stat().st_size > 0
        assert list((offline_run / "files" / "media" / "table").glob("results_*.table.json"))
