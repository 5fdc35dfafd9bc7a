import json
import platform
import shutil
import subprocess
import sys
from datetime import datetime

import pytest

from oversight.tracking import run_info, write_run_info


def test_run_info_records_seed_versions_machine_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(run_info, "PACKAGES", ("numpy", "wandb", "no-such-package-oversight"))
    info = write_run_info(tmp_path / "run", seed=17)

    assert json.loads((tmp_path / "run" / "run_info.json").read_text()) == info
    assert info["seed"] == 17
    assert info["packages"]["numpy"] == __import__("numpy").__version__
    assert info["packages"]["no-such-package-oversight"] is None
    assert info["python"] == platform.python_version()
    assert info["hostname"] and info["platform"]
    assert info["command"] == sys.argv
    assert info["jax"]["backend"] == "cpu" and info["jax"]["device_count"] >= 1
    assert datetime.fromisoformat(info["start_time_utc"]).utcoffset().total_seconds() == 0


def test_default_packages_are_the_ones_that_decide_results():
    assert set(run_info.PACKAGES) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers"}


@pytest.fixture(autouse=True)
def fresh_code_version():
    run_info.code_version.cache_clear()  # read once per process: each test is a fresh process here
    yield
    run_info.code_version.cache_clear()


def test_outside_a_git_checkout_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(run_info, "CODE_DIR", tmp_path)
    info = write_run_info(tmp_path, seed=0)
    assert info["git_commit"] is None and info["git_dirty"] is None


def test_without_git_installed_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert write_run_info(tmp_path, seed=0)["git_commit"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_and_dirty_flag_come_from_the_checkout_holding_the_code(tmp_path, monkeypatch):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    monkeypatch.setattr(run_info, "CODE_DIR", tmp_path)

    write_run_info(tmp_path / "out", seed=0)
    info = write_run_info(tmp_path / "out", seed=0)  # now with an untracked run folder in the checkout
    assert info["git_commit"] == git("rev-parse", "HEAD").strip()
    assert info["git_dirty"] is False

    (tmp_path / "code.py").write_text("x = 2\n")
    # a sweep's later jobs run the code the process started with: they record that, not the edit
    assert write_run_info(tmp_path / "out", seed=0)["git_dirty"] is False
    run_info.code_version.cache_clear()  # a new process
    assert write_run_info(tmp_path / "out", seed=0)["git_dirty"] is True


def test_without_jax_this_is_process_zero_and_jax_facts_are_null(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    assert run_info.process_index() == 0
    assert set(write_run_info(tmp_path, seed=0)["jax"].values()) == {None}
