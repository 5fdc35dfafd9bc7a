"""The package as pip installs it: a wheel (not the editable checkout) runs an experiment from another folder."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import oversight
from oversight.errors import MissingDependencyError, UserError, require

REPO = Path(oversight.__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    """Every Python package of the checkout under its installed name (experiments/ becomes oversight.experiments)."""
    found = set()
    for root, installed_as in [("oversight", "oversight"), ("experiments", "oversight.experiments")]:
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root).parts
            found.add(".".join([installed_as, *rel]))
    return found


def test_pyproject_lists_every_package_of_the_checkout():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed - {"oversight.conf"} == _packages_on_disk()


def test_a_built_wheel_runs_an_experiment_from_another_folder(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = (
        tmp_path / "source"
    )  # a copy: the build's own folders (build/, *.egg-info) stay out of the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ["oversight", "experiments", "conf"]:
        shutil.copytree(REPO / name, source / name, ignore=skip)
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300
    )
    (wheel,) = (tmp_path / "dist").glob("oversight-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    assert not (site / "experiments").exists(), "the wheel must not install a top-level `experiments` package"
    assert (site / "oversight" / "conf" / "experiment" / "sft.yaml").is_file()
    assert (site / "oversight" / "conf" / "experiment_model" / "rlhf_smollm2_135m.yaml").is_file()

    # A research repo of the user's own, with a folder named `experiments` that must not shadow ours.
    elsewhere = tmp_path / "my_project"
    (elsewhere / "experiments").mkdir(parents=True)
    (elsewhere / "experiments" / "__init__.py").write_text(
        "raise ImportError('the user project, not ours')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONPATH": str(site), "XLA_FLAGS": "", "WANDB_MODE": "offline"}
    where = subprocess.run(
        [sys.executable, "-c", "import oversight, sys; print(oversight.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), "the test must run the wheel, not the checkout"
    run = elsewhere / "runs" / "sft"
    args = [
        "experiment=sft", "train.steps=4", "train.batch_size=8", "task.num_train=64", "task.num_eval=8",
        "experiment.eval_samples=4", "experiment.max_new_tokens=8", "model.d_model=32", "model.n_layers=1",
        "tracker=disabled", f"hydra.run.dir={run}",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", *args], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert any(r["metric"] == "sft/gold_accuracy" for r in rows)


def test_a_missing_optional_dependency_is_a_user_error_naming_the_extra_that_installs_it():
    with pytest.raises(
        MissingDependencyError,
        match=r"to_dataset needs the `no_such_pkg` package: pip install 'oversight\[datasets\]'",
    ):
        require("no_such_pkg", "datasets", "to_dataset")
    assert issubclass(MissingDependencyError, UserError) and issubclass(MissingDependencyError, ImportError)
    assert require("json", "datasets", "anything").dumps([1]) == "[1]"
