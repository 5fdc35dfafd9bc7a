"""Keeps W&B local and quiet in these tests: no network, no account, nothing written to the home directory."""

import pytest


@pytest.fixture(autouse=True)
def _local_wandb(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("WANDB_DIR", str(home / "runs"))
    # An unroutable address: any attempt to go online fails fast instead of reaching a server.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def fake_sweep(tmp_path):
    """A Hydra multirun folder with two finished jobs, written through the real JSONL backend."""
    from omegaconf import OmegaConf

    from oversight.tracking import JsonlTracker

    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for job, lr in enumerate([0.1, 0.01]):
        run_dir = sweep / str(job)
        tracker = JsonlTracker(run_dir)
        for step in range(5):
            tracker.log({"train/loss": lr * (5 - step)}, step)
            if step % 2 == 0:
                tracker.log({"eval/acc": 0.5 + job / 10 + step / 100}, step)
        if job == 0:
            tracker.table(
                "results", [{"quantity": "G", "value": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 100}]
            )
        tracker.finish()
        config = {"seed": 0, "optim": {"lr": lr, "warmup": 10}, "tracker": {"tags": ["sweep", "ppo"]}}
        OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    return sweep
