import pytest

from oversight.tracking import JsonlTracker
from oversight.tracking.runs import find_runs, load_configs, load_results, load_runs


def test_load_runs_gives_one_row_per_log_call_with_run_names_and_flattened_config(fake_sweep):
    metrics = load_runs(fake_sweep)

    assert sorted(metrics["run"].unique()) == ["0", "1"]
    assert list(metrics.columns[:3]) == ["run", "step", "time"]
    assert {"train/loss", "eval/acc", "seed", "optim.lr", "optim.warmup", "tracker.tags"} <= set(
        metrics.columns
    )
    run0 = metrics[metrics["run"] == "0"]
    assert len(run0) == 8  # 5 train logs + 3 eval logs
    assert run0["eval/acc"].dropna().tolist() == [0.5, 0.52, 0.54]
    assert (run0["optim.lr"] == 0.1).all()
    assert (metrics["tracker.tags"] == '["sweep", "ppo"]').all()


def test_final_metrics_per_run_are_one_groupby_away(fake_sweep):
    final = load_runs(fake_sweep).groupby("run")[["train/loss", "eval/acc"]].last()
    assert final.loc["1"].tolist() == pytest.approx([0.01, 0.64])


def test_load_results_reads_every_results_table_with_run_and_config(fake_sweep):
    results = load_results(fake_sweep)
    assert results[["run", "quantity", "value", "ci_low", "ci_high", "n"]].to_dict("records") == [
        {"run": "0", "quantity": "G", "value": 0.6, "ci_low": 0.5, "ci_high": 0.7, "n": 100}
    ]
    assert results["optim.lr"].tolist() == [0.1]


def test_load_results_without_any_results_is_empty(tmp_path):
    JsonlTracker(tmp_path / "run").finish()
    assert load_results(tmp_path).empty


def test_runs_are_named_relative_to_the_folders_given(fake_sweep):
    root = fake_sweep.parents[2]
    assert sorted(find_runs(root)) == ["multirun/2026-01-01/12-00-00/0", "multirun/2026-01-01/12-00-00/1"]
    assert list(find_runs(fake_sweep / "1")) == ["1"]
    assert sorted(find_runs([fake_sweep / "0", str(fake_sweep / "1")])) == ["0", "1"]


def test_a_run_without_config_yaml_still_loads(tmp_path):
    tracker = JsonlTracker(tmp_path / "bare")
    tracker.log({"train/loss": 1.0}, 0)
    tracker.finish()
    (row,) = load_runs(tmp_path).to_dict("records")
    assert (row["run"], row["step"], row["train/loss"]) == ("bare", 0, 1.0)
    assert list(load_configs(tmp_path).columns) == ["run"]


def test_a_config_key_clashing_with_a_logged_column_is_an_error(tmp_path):
    JsonlTracker(tmp_path / "run").finish()
    (tmp_path / "run" / "config.yaml").write_text("step: 3\n")
    with pytest.raises(ValueError, match="step"):
        load_runs(tmp_path)


def test_folders_without_runs_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folders"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_runs(tmp_path / "missing")
