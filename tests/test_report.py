"""`oversight report`: run folders -> one Markdown table per experiment and setting, numbers over seeds."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import oversight
from oversight.report import (
    aggregate,
    document,
    group_runs,
    load_runs,
    merge,
    report,
    reproduce_command,
    sections,
    seed_interval,
)

REPO = Path(oversight.__file__).resolve().parents[1]
T_975_DF2 = 4.302652729749464  # Student t, 97.5% quantile, 2 degrees of freedom (from a table)


def _write_run(folder: Path, *, seed: int, d_model: int, rows: list[dict], overrides: list[str]) -> None:
    folder.mkdir(parents=True)
    config = {"seed": seed, "model": {"d_model": d_model}, "tracker": {"wandb_mode": "offline"}}
    config["experiment"] = {"name": "toy"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"seed": seed, "git_commit": "abcdef1234567", "git_dirty": False, "platform": "Linux-test-x86_64"}
    info["start_time_utc"] = "2026-12-05T08:00:00+00:00"
    (folder / "run_info.json").write_text(json.dumps(info))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


ACCURACY = {0: 0.5, 1: 0.7, 2: 0.9}  # d_model=64, per seed
BEST_OF = {(0, 1): 0.2, (1, 1): 0.4, (2, 1): 0.3, (0, 4): 0.6, (1, 4): 0.6, (2, 4): 0.9}  # (seed, N)


@pytest.fixture
def sweep(tmp_path):
    """A Hydra-like sweep `oversight -m experiment=toy model.d_model=64,128 seed=0,1,2` with known values,
    and one run started on its own (d_model=256, seed 0)."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for d_model in (64, 128):
        for seed in (0, 1, 2):
            accuracy = ACCURACY[seed] if d_model == 64 else 0.25
            rows = [
                {"metric": "toy/accuracy", "value": accuracy, "ci_low": 0.0, "ci_high": 1.0, "n": 100,
                 "task": "arithmetic"},
                # a column that changes from seed to seed is a measurement, not a label: no extra rows
                {"metric": "toy/checks", "value": 2.0, "ci_low": None, "ci_high": None, "n": 10,
                 "task": "arithmetic", "max_checks": 3 + seed},
                *({"metric": "toy/best_of", "value": BEST_OF[seed, n], "ci_low": None, "ci_high": None, "n": 50,
                   "task": "arithmetic", "N": n} for n in (1, 4)),
            ]  # fmt: skip
            overrides = ["experiment=toy", f"model.d_model={d_model}", f"seed={seed}"]
            _write_run(root / str(job), seed=seed, d_model=d_model, rows=rows, overrides=overrides)
            job += 1
    single = [{"metric": "toy/accuracy", "value": 0.8, "ci_low": 0.71, "ci_high": 0.87, "n": 100}]
    _write_run(
        tmp_path / "single",
        seed=0,
        d_model=256,
        rows=single,
        overrides=["experiment=toy", "model.d_model=256", "hydra.run.dir=somewhere"],
    )
    return tmp_path


def _table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """quantity -> cells of the table under `heading`."""
    section = markdown.split(heading, 1)[1].split("\n### ", 1)[0]
    cells = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return {c[0].strip(): [x.strip() for x in c[1:]] for c in cells}


def test_seed_interval_is_the_student_t_interval_of_the_seed_values():
    mean, low, high = seed_interval([0.5, 0.7, 0.9])
    half = T_975_DF2 * 0.2 / math.sqrt(3)  # sample sd of 0.5, 0.7, 0.9 is 0.2
    assert (
        mean == pytest.approx(0.7) and low == pytest.approx(0.7 - half) and high == pytest.approx(0.7 + half)
    )


def test_runs_are_grouped_by_experiment_and_setting_apart_from_seed_and_tracker(sweep):
    groups = group_runs(load_runs([sweep]))
    assert [(g.experiment, g.settings, [r.seed for r in g.runs]) for g in groups] == [
        ("toy", {"model.d_model": 64}, [0, 1, 2]),
        ("toy", {"model.d_model": 128}, [0, 1, 2]),
        ("toy", {"model.d_model": 256}, [0]),
    ]
    rows = aggregate(groups[0])
    assert [(r.metric, r.labels) for r in rows] == [
        ("toy/accuracy", {"task": "arithmetic"}),
        ("toy/checks", {"task": "arithmetic"}),
        ("toy/best_of", {"N": 1, "task": "arithmetic"}),
        ("toy/best_of", {"N": 4, "task": "arithmetic"}),
    ]


def test_reproduce_command_rebuilds_the_sweep_from_the_recorded_overrides(sweep):
    groups = group_runs(load_runs([sweep]))
    assert reproduce_command(groups[0].runs) == "oversight -m experiment=toy model.d_model=64 seed=0,1,2"
    # the single run: its hydra.run.dir is where it was written, not what it was
    assert reproduce_command(groups[2].runs) == "oversight experiment=toy model.d_model=256 seed=0"
    everything = [r for g in groups[:2] for r in g.runs]
    assert reproduce_command(everything) == "oversight -m experiment=toy model.d_model=64,128 seed=0,1,2"


def test_rendered_tables_hold_the_hand_computed_numbers(sweep):
    md = report([sweep], output="docs/results.md")  # the command line is tested on a real sweep
    # the experiment's section says how to make every run again, sweep and single run, then rewrite itself
    assert (
        f"## toy\n\n```bash\n"
        f"oversight -m experiment=toy model.d_model=64,128 seed=0,1,2 hydra.sweep.dir={sweep / 'sweep'}\n"
        f"oversight experiment=toy model.d_model=256 seed=0 hydra.run.dir={sweep / 'single'}\n"
        f"oversight report {sweep / 'single'} {sweep / 'sweep'} --update docs/results.md\n```\n"
    ) in md
    assert "Covers: `toy`." in md

    heading = "### toy — model.d_model=64\n"
    assert heading + "\n```bash\noversight -m experiment=toy model.d_model=64 seed=0,1,2\n```" in md
    table = _table_rows(md, heading)
    half = T_975_DF2 * 0.2 / math.sqrt(3)  # 0.4968
    # accuracy 0.5, 0.7, 0.9: mean 0.700, t interval 0.7 -+ 0.497
    assert table["`toy/accuracy`"] == [
        "3",
        "0.700",
        f"[{0.7 - half:.3f}, {0.7 + half:.3f}]",
        "0.500, 0.700, 0.900",
        "100",
    ]
    assert table["`toy/accuracy`"][2] == "[0.203, 1.197]"
    # best-of-N, one row per N: N=1 gives 0.2, 0.4, 0.3 (mean 0.3, sd 0.1); N=4 gives 0.6, 0.6, 0.9 (sd 0.1732)
    assert table["`toy/best_of` (N=1)"] == ["3", "0.300", "[0.052, 0.548]", "0.200, 0.400, 0.300", "50"]
    assert table["`toy/best_of` (N=4)"] == ["3", "0.700", "[0.270, 1.130]", "0.600, 0.600, 0.900", "50"]
    assert table["`toy/checks`"][:2] == ["3", "2.000"]
    assert "Every row: task=arithmetic." in md.split(heading, 1)[1].split("###", 1)[0]
    assert "commit abcdef1; started 2026-12-05; machine Linux-test-x86_64" in md

    # the same seeds at d_model=128 all measured 0.25: a table of its own, a zero-width interval
    table = _table_rows(md, "### toy — model.d_model=128\n")
    assert table["`toy/accuracy`"][:4] == ["3", "0.250", "[0.250, 0.250]", "0.250, 0.250, 0.250"]
    # one seed: the run's own interval, marked as such
    table = _table_rows(md, "### toy — model.d_model=256\n")
    assert table["`toy/accuracy`"] == ["1", "0.800", "[0.710, 0.870] within run", "0.800", "100"]


def _tiny_env():
    env = dict(os.environ, XLA_FLAGS="", WANDB_MODE="disabled")
    return env


TINY = [
    "experiment=sft",
    "train.steps=2",
    "train.batch_size=8",
    "train.eval_every=2",
    "train.log_every=1",
    "task.num_train=32",
    "task.num_eval=12",
    "experiment.eval_samples=4",
    "experiment.max_new_tokens=8",
    "model.d_model=32",
    "model.n_layers=1",
    "tracker=disabled",
]


def test_a_real_tiny_sweep_reports_its_own_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, "-m", "oversight.cli", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=_tiny_env(),
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # each job ends by saying what it measured and where the results are
    assert run.stdout.count("sft finished: ") == 2
    assert f"Results: {sweep / '1' / 'results.jsonl'}" in run.stdout
    assert f"As a Markdown table: oversight report {sweep}" in run.stdout

    output = tmp_path / "docs" / "results.md"
    output.parent.mkdir()
    output.write_text(document({"zeta": "## zeta\n\nmeasured earlier\n"}))  # another experiment's section
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", "report", str(sweep), "--update", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    md = output.read_text()
    assert f"oversight report {sweep} --update {output}" in md
    assert sections(md)["zeta"] == "## zeta\n\nmeasured earlier\n" and "Covers: `sft`, `zeta`." in md
    assert "oversight -m " + " ".join(TINY) + " seed=0,1\n" in md  # the group's own command
    assert md.count("\n### sft") == 1  # two seeds of one setting: one table

    rows = {seed: [json.loads(line) for line in (sweep / str(seed) / "results.jsonl").read_text().splitlines()]
            for seed in (0, 1)}  # fmt: skip
    table = _table_rows(md, "### sft\n")
    accuracy = [next(r for r in rows[s] if r["metric"] == "sft/gold_accuracy")["value"] for s in (0, 1)]
    assert table["`sft/gold_accuracy`"][:2] == ["2", f"{(accuracy[0] + accuracy[1]) / 2:.3f}"]
    assert table["`sft/gold_accuracy`"][3] == f"{accuracy[0]:.3f}, {accuracy[1]:.3f}"
    # the held-out loss differs between the seeds: its interval is the mean -+ t(0.975, 1 df) * sd / sqrt(2)
    a, b = (next(r for r in rows[s] if r["metric"] == "sft/eval_loss")["value"] for s in (0, 1))
    assert a != b
    mean, half = (a + b) / 2, 12.706204736174698 * abs(a - b) / math.sqrt(2) / math.sqrt(2)
    assert table["`sft/eval_loss`"][:4] == [
        "2", f"{mean:.3f}", f"[{mean - half:.3f}, {mean + half:.3f}]", f"{a:.3f}, {b:.3f}"
    ]  # fmt: skip


def test_report_on_a_folder_without_runs_fails_saying_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert f"no run folders (with config.yaml and results.jsonl) under {tmp_path}" in proc.stderr


def test_the_run_digest_shows_each_result_and_says_why_a_value_is_missing(tmp_path):
    from oversight.report import run_digest

    rows = [
        {"metric": "toy/accuracy", "value": 0.8, "ci_low": 0.71, "ci_high": 0.87, "n": 100, "task": "arithmetic"},
        {"metric": "toy/hallucinated", "value": None, "ci_low": None, "ci_high": None, "n": 0, "task": "arithmetic"},
    ]  # fmt: skip
    _write_run(tmp_path / "run", seed=3, d_model=64, rows=rows, overrides=["experiment=toy", "seed=3"])
    lines = run_digest(tmp_path / "run", description="a toy").splitlines()
    assert lines[:2] == ["toy finished: a toy", "Run: seed 3, task=arithmetic"]
    assert lines[2].split() == ["toy/accuracy", "0.800", "95%", "interval", "[0.710,", "0.870]", "n=100"]
    assert lines[3].split() == ["toy/hallucinated", "–", "not", "measurable:", "no", "cases", "n=0"]
    assert lines[-1] == f"As a Markdown table: oversight report {tmp_path / 'run'}"


def test_a_sweep_job_without_hydras_record_takes_its_own_value_of_each_swept_list(tmp_path):
    rows = [{"metric": "toy/accuracy", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "n": 100}]
    for seed in (0, 1):
        folder = tmp_path / str(seed)
        _write_run(folder, seed=seed, d_model=64, rows=rows, overrides=[])
        (folder / ".hydra" / "overrides.yaml").unlink()
        info = json.loads((folder / "run_info.json").read_text())
        info["command"] = ["oversight", "-m", "experiment=toy", "seed=0,1", "model.d_model=64"]
        (folder / "run_info.json").write_text(json.dumps(info))
    runs = load_runs([tmp_path])
    assert [r.overrides for r in runs] == [
        ("experiment=toy", f"seed={s}", "model.d_model=64") for s in (0, 1)
    ]
    assert reproduce_command(runs) == "oversight -m experiment=toy model.d_model=64 seed=0,1"


def test_merge_replaces_the_sections_of_the_experiments_updated_and_keeps_the_others():
    def doc(**bodies):
        return document({e: f"## {e}\n\n{b}\n" for e, b in bodies.items()})

    old = doc(alpha="alpha at commit 1", beta="beta at commit 1")
    new = merge(old, doc(beta="beta at commit 2", gamma="gamma at commit 2"))
    assert new == doc(alpha="alpha at commit 1", beta="beta at commit 2", gamma="gamma at commit 2")
    assert "Covers: `alpha`, `beta`, `gamma`." in new
    assert sections(new)["alpha"] == "## alpha\n\nalpha at commit 1\n"
    assert merge(new, new) == new


def test_runs_on_another_float_path_get_a_check_paired_by_seed(tmp_path):
    auto, plain = {0: 0.5, 1: 0.7, 2: 0.9}, {0: 0.55, 1: 0.65, 2: 1.0}
    for path, values in (("auto", auto), ("plain", plain)):
        for seed, value in values.items():
            folder = tmp_path / path / str(seed)
            _write_run(folder, seed=seed, d_model=64, rows=[{"metric": "toy/win", "value": value, "n": 10}],
                       overrides=["experiment=toy", f"seed={seed}", f"kernels={path}"])  # fmt: skip
            config = yaml.safe_load((folder / "config.yaml").read_text()) | {"kernels": path}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
    md = report([tmp_path])
    assert md.count("\n### toy — kernels=") == 2
    # a run from before the setting existed has no value for it: shown as unset, checked as the default
    older = tmp_path / "older" / "0"
    _write_run(older, seed=0, d_model=64, rows=[{"metric": "toy/win", "value": 0.4, "n": 10}], overrides=[])
    assert "\n### toy — kernels unset\n" in report([tmp_path / "older", tmp_path / "plain"])
    diffs = [plain[s] - auto[s] for s in (0, 1, 2)]  # 0.05, -0.05, 0.10
    mean, half = np.mean(diffs), T_975_DF2 * np.std(diffs, ddof=1) / math.sqrt(3)
    table = _table_rows(md, "### float-path check: kernels=plain against the default\n")
    assert table["`toy/win`"] == [
        "0.700 [0.203, 1.197]",
        "0.733 [0.146, 1.320]",  # sd of 0.55, 0.65, 1.00 is 0.2363: 0.733 -+ 4.303 * 0.2363 / sqrt(3)
        f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]",
        "3",
    ]
    assert table["`toy/win`"][2] == "0.033 [-0.156, 0.223]"


def test_a_group_made_by_a_config_group_option_is_titled_by_it_not_by_every_value_it_set(tmp_path):
    """`model=big` sets many values; the title names the option (from Hydra's recorded choices), as the
    command line gave it, and the other group's choice, instead of listing every value that differs."""
    for name, width, layers in (("tiny", 64, 2), ("big", 576, 30)):
        for seed in (0, 1):
            folder = tmp_path / name / str(seed)
            overrides = ["experiment=toy", f"seed={seed}"] + ([f"model={name}"] if name == "big" else [])
            _write_run(folder, seed=seed, d_model=width, rows=[{"metric": "toy/win", "value": 0.5, "n": 10}],
                       overrides=overrides)  # fmt: skip
            config = yaml.safe_load((folder / "config.yaml").read_text())
            config["model"] |= {"n_layers": layers, "checkpoint": None if name == "tiny" else "big-ckpt"}
            config["train"] = {"learning_rate": 3e-3 if name == "tiny" else 3e-5}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            hydra = {
                "hydra": {
                    "runtime": {"choices": {"experiment": "toy", "model": name, "hydra/env": "default"}}
                }
            }
            (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    md = report([tmp_path])
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert sorted(titles) == ["### toy — model=big", "### toy — model=tiny"]
    # without Hydra's record of the choices, every differing value names the group, as before
    for folder in tmp_path.glob("*/*/.hydra/hydra.yaml"):
        folder.unlink()
    titles = [line for line in report([tmp_path]).splitlines() if line.startswith("### ")]
    assert "### toy — model.checkpoint=big-ckpt, model.d_model=576, model.n_layers=30, train.learning_rate=3e-05" in titles
