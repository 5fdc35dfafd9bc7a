"""The `rlhf` experiment end to end on a tiny config: run folder, results rows, resume, and its notebook."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

import oversight

REPO = Path(oversight.__file__).resolve().parents[1]
# Every stage, as small as it gets: a 1-layer model, a few steps of SFT and RM, four PPO iterations.
PULSE = [
    "experiment=rlhf",
    "tracker=disabled",
    "task.num_train=256",
    "task.num_eval=32",
    "model.d_model=64",
    "model.n_layers=1",
    "train.steps=20",
    "train.batch_size=16",
    "train.log_every=5",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "experiment.sft_eval_samples=8",
    "experiment.max_new_tokens=32",
    "experiment.comparisons.prompts=64",
    "experiment.reward_model.train.steps=10",
    "experiment.reward_model.train.batch_size=8",
    "experiment.reward_model.train.warmup_steps=1",
    "experiment.reward_model.train.eval_every=5",
    "experiment.reward_model.train.checkpoint_every=5",
    "experiment.ppo.iterations=4",
    "experiment.ppo.rollout_batch=16",
    "experiment.ppo.minibatches=2",
    "experiment.ppo.epochs=2",
    "experiment.ppo.eval_every=2",
    "experiment.ppo.checkpoint_every=2",
    "experiment.best_of_n.prompts=4",
    "experiment.best_of_n.max_n=8",
    "experiment.eval_prompts=16",
]


def _run(run_dir: Path, *overrides: str) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as a user runs it (conftest forces 8 for the sharding tests)
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", *PULSE, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rows(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def pulse_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rlhf") / "run"
    _run(run_dir)
    return run_dir


def test_pulse_run_writes_every_stage_and_the_results_rows(pulse_run):
    for name in ("config.yaml", "metrics.jsonl", "results.jsonl", "run_info.json", "summary.json"):
        assert (pulse_run / name).is_file(), name
    # Global step numbering: SFT 1..20, reward model 21..30, PPO 31..34, each stage in its own folder.
    ckpt = pulse_run / "checkpoints"
    assert (ckpt / "sft" / "20").is_dir() and (ckpt / "rm" / "30").is_dir() and (ckpt / "ppo" / "34").is_dir()

    metrics = _rows(pulse_run, "metrics.jsonl")
    keys = set().union(*metrics)
    for key in ("sft/loss", "rm/loss", "rm/heldout_accuracy_gold", "ppo/kl", "ppo/policy_clipfrac",
                "ppo/value_explained_variance", "gold/reward", "gold/win_rate", "gold/kl"):  # fmt: skip
        assert key in keys, key
    assert not any(k.startswith("train/") for k in keys), "stages log under their own prefixes"
    steps = [r["step"] for r in metrics]
    assert steps == sorted(steps)
    assert [r["step"] for r in metrics if "ppo/kl" in r] == [31, 32, 33, 34]

    results = {
        (r["metric"], r.get("method"), r.get("N"), r.get("step")): r
        for r in _rows(pulse_run, "results.jsonl")
    }
    for metric in ("labeller/gold_agreement", "rm/accuracy_gold", "rm/accuracy_labeller", "sft/gold_reward",
                   "ppo/gold_reward", "gold/win_rate"):  # fmt: skip
        assert (metric, None, None, None) in results, metric
    win = results[("gold/win_rate", None, None, None)]
    assert win["n"] == 16 and win["ci_low"] <= win["value"] <= win["ci_high"]
    # Over-optimisation points: best-of-N at N = 1..8 with KL = log N - (N - 1) / N, PPO at every evaluation.
    for n in (1, 2, 4, 8):
        gold = results[("overopt/gold", "best_of_n", n, None)]
        assert gold["kl"] == pytest.approx(np.log(n) - (n - 1) / n)
        assert ("overopt/proxy", "best_of_n", n, None) in results
        empirical = results[("overopt/kl_empirical", "best_of_n", n, None)]["value"]
        assert 0.0 <= empirical <= gold["kl"] + 1e-9  # repeated samples: at most the bound
    # More samples to choose from can only raise the mean proxy score of the chosen one, prompt by prompt.
    proxy = [results[("overopt/proxy", "best_of_n", n, None)]["value"] for n in (1, 2, 4, 8)]
    assert proxy[-1] >= proxy[0]
    ppo_points = sorted(
        r["step"] for (m, method, _, _), r in results.items() if m == "overopt/gold" and method == "ppo"
    )
    assert ppo_points == [0, 2, 4]
    assert results[("overopt/gold", "ppo", None, 0)]["kl"] == pytest.approx(0.0, abs=1e-5)


def test_a_finished_run_resumed_restores_every_stage_and_reports_the_same(pulse_run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(pulse_run, again)
    before = _rows(again, "results.jsonl")
    _run(again)
    assert _rows(again, "results.jsonl") == before


@pytest.mark.slow
def test_killed_during_ppo_resumes_to_the_same_parameters_and_metrics(pulse_run, tmp_path):
    # A run stopped after PPO iteration 2 (its checkpoint at step 32 is the newest) picks up there.
    killed = tmp_path / "killed"
    shutil.copytree(pulse_run, killed)
    shutil.rmtree(killed / "checkpoints" / "ppo" / "34")
    _run(killed)

    def clean(rows):
        return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in rows]

    assert clean(_rows(killed, "metrics.jsonl")) == clean(_rows(pulse_run, "metrics.jsonl"))
    assert _rows(killed, "results.jsonl") == _rows(pulse_run, "results.jsonl")
    a = ocp.StandardCheckpointer().restore((pulse_run / "checkpoints" / "ppo" / "34" / "state").absolute())
    b = ocp.StandardCheckpointer().restore((killed / "checkpoints" / "ppo" / "34" / "state").absolute())
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_notebook_draws_the_over_optimisation_curves_of_a_run(pulse_run, execute_notebook):
    printed, _ = execute_notebook(
        "rlhf.ipynb", pulse_run, "print(sorted(curves['method'].unique()), len(curves))"
    )
    # 4 best-of-N points and 3 PPO evaluations, each with gold and proxy.
    assert printed.strip() == "['best_of_n', 'ppo'] 7"


def test_ppo_against_the_gold_reward_maximises_the_normalised_gold_score(tmp_path):
    """The ceiling arm: every iteration's score is the rollouts' gold reward under the normalisation fitted
    on the reward model's SFT samples, not the reward model's score."""
    _run(tmp_path / "run", "experiment.ppo.reward=gold")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    gain, bias = summary["ppo/gold_norm_gain"], summary["ppo/gold_norm_bias"]
    iterations = [r for r in _rows(tmp_path / "run", "metrics.jsonl") if "ppo/score" in r]
    assert len(iterations) == 4
    for r in iterations:
        assert r["ppo/score"] == pytest.approx(gain * r["ppo/gold_reward"] + bias, abs=1e-5)
    assert any(abs(r["ppo/score"] - r["ppo/proxy_reward"]) > 1e-3 for r in iterations)


def test_split_for_rl_keeps_sft_prompts_out_of_the_comparisons_and_ppo():
    from oversight.experiments.rlhf import split_for_rl
    from oversight.tasks import get_task

    problems = get_task("arithmetic", ops="+-").sample(400, 1, seed=0)
    sft, rl = split_for_rl(problems, 0.5)
    sft_prompts, rl_prompts = {p.prompt for p in sft}, [p.prompt for p in rl]
    assert not sft_prompts & set(rl_prompts)
    assert len(rl_prompts) == len(set(rl_prompts))  # each RL prompt once
    distinct = len({p.prompt for p in problems})
    assert len(sft_prompts) + len(rl_prompts) == distinct
    assert abs(len(rl_prompts) - distinct / 2) <= 1
    assert split_for_rl(problems, 0.0) == (problems, problems)
    with pytest.raises(ValueError, match="rl_fraction"):
        split_for_rl(problems[:1], 0.5)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("rlhf_rounds") / "run"
    _run(run_dir, "experiment.rounds=2")
    return run_dir


def test_a_second_round_ranks_policy_samples_retrains_the_reward_model_and_continues_ppo(two_rounds):
    # SFT 1..20, then per round the reward model (10 steps) and PPO (4 iterations): 21..34, 35..48.
    ckpt = two_rounds / "checkpoints"
    for stage, step in (("sft", 20), ("rm", 30), ("ppo", 34), ("rm_2", 44), ("ppo_2", 48)):
        assert (ckpt / stage / str(step)).is_dir(), stage
    metrics = _rows(two_rounds, "metrics.jsonl")
    assert [r["step"] for r in metrics if "ppo/kl" in r] == [31, 32, 33, 34, 45, 46, 47, 48]
    assert [r["step"] for r in metrics if "rm/loss" in r and r["step"] > 34]  # round 2's reward model trained
    steps = [r["step"] for r in metrics]
    assert steps == sorted(steps)
    rows = _rows(two_rounds, "results.jsonl")
    assert sorted(r["round"] for r in rows if r["metric"] == "rm/accuracy_gold") == [1, 2]
    ppo_points = sorted(r["step"] for r in rows if r["metric"] == "overopt/gold" and r.get("method") == "ppo")
    assert ppo_points == [0, 2, 4, 6, 8]  # PPO iterations counted over both rounds


@pytest.mark.slow
def test_killed_in_the_second_round_resumes_to_the_same_results(two_rounds, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(two_rounds, killed)
    shutil.rmtree(killed / "checkpoints" / "ppo_2" / "48")
    _run(killed, "experiment.rounds=2")
    assert _rows(killed, "results.jsonl") == _rows(two_rounds, "results.jsonl")
