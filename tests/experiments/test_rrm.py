"""Recursive reward modelling: the recursion's wiring (which feedback trains which reward model, and which
trained model assists which overseer), options, and a tiny end-to-end run."""

import json

import numpy as np
import pytest

from oversight.experiments.rrm import (
    Feedback,
    ProcessRewardModelConfig,
    RRMOptions,
    arm_feedback,
    arm_names,
    recursive_feedback,
    released_after,
    training_plan,
)
from oversight.overseers import HumanCapacity


def test_each_arm_is_the_overseer_with_the_recursion_beneath_it():
    assert arm_names(2) == [
        "unassisted", "rrm_depth1", "rrm_depth2", "untrained_assistant", "random_assistant", "gold_assistant",
        "gold_feedback",
    ]  # fmt: skip
    assert arm_feedback("unassisted", 2).key == "L2:H"
    assert arm_feedback("rrm_depth1", 2).key == "L2:H+L1:H"
    assert arm_feedback("rrm_depth2", 2).key == "L2:H+L1:H+L0:H"
    assert arm_feedback("gold_assistant", 2).key == "L2:H+L1:gold"
    assert arm_feedback("gold_feedback", 2).key == "L2:gold"
    # the controls: the untrained reward model's pointers, and pointers in a random order
    assert arm_feedback("untrained_assistant", 2).key == "L2:H+L1:untrained"
    assert arm_feedback("random_assistant", 1).key == "L1:H+L0:random"
    # the recursion bottoms out at level 0: depth 2 at level 1 is depth 1, and level 0 is always unassisted
    assert arm_feedback("rrm_depth2", 1) == arm_feedback("rrm_depth1", 1) == recursive_feedback(1, 5)
    assert {arm_feedback(a, 0).key for a in arm_names(2)} == {"L0:H", "L0:gold"}
    assert recursive_feedback(3, 3).depth == 3 and recursive_feedback(3, 3).assistant == recursive_feedback(
        2, 2
    )
    with pytest.raises(ValueError, match="unknown arm"):
        arm_feedback("rrm_deep", 1)


def test_the_plan_trains_every_model_once_and_each_assistant_one_level_down_before_it_is_used():
    plan = training_plan(3, arm_names(2))
    keys = [f.key for f in plan]
    # level 0: H, gold and the two controls; level 1: H, H+L0:H, H+L0:gold, gold, H+L0:{two controls} and the
    # two controls; level 2: the same and H+L1:H+L0:H
    assert len(keys) == len(set(keys)) == 4 + 8 + 7
    assert keys[:2] == ["L0:H", "L0:gold"]
    for i, f in enumerate(plan):
        if f.assistant is not None:
            assert f.assistant.level == f.level - 1
            assert f.assistant in plan[:i]
    deeper = training_plan(4, arm_names(3))
    assert "L3:H+L2:H+L1:H+L0:H" in [f.key for f in deeper]


def test_each_reward_model_is_released_once_after_its_last_use_as_an_assistant():
    plan = training_plan(3, arm_names(2))
    release = released_after(plan)
    assert sorted(f.key for step in release for f in step) == sorted(f.key for f in plan)  # each once
    when = {f: i for i, step in enumerate(release) for f in step}
    for i, f in enumerate(plan):
        assert when[f] >= i
        if f.assistant is not None:
            assert when[f.assistant] >= i  # still held when the model it helps is judged
    held = [sum(1 for f in plan[: i + 1] if when[f] > i) for i in range(len(plan))]
    assert max(held) < len(plan) // 2  # the run never holds most of its reward models at once


def test_feedback_and_options_reject_a_broken_recursion():
    with pytest.raises(ValueError, match="from level 1"):
        Feedback(2, "overseer", Feedback(0, "overseer"))
    with pytest.raises(ValueError, match="from level"):
        Feedback(1, "gold", Feedback(0, "overseer"))
    with pytest.raises(ValueError, match="from level"):
        Feedback(1, "untrained", Feedback(0, "overseer"))  # a control assists; it has no assistant
    with pytest.raises(ValueError, match="experiment.depth=3"):
        RRMOptions(difficulties=[1, 3, 7], depth=3)
    with pytest.raises(ValueError, match="experiment.difficulties"):
        RRMOptions(difficulties=[3, 1])
    with pytest.raises(ValueError, match="experiment.hints"):
        RRMOptions(hints=0)
    with pytest.raises(ValueError, match="experiment.overseer.budget=0"):
        RRMOptions(overseer=HumanCapacity(budget=0))
    with pytest.raises(ValueError, match="experiment.reward_model.reference_p"):
        ProcessRewardModelConfig(reference_p=1.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, run_experiment):
    run_dir = tmp_path_factory.mktemp("rrm") / "run"
    run_experiment(
        run_dir,
        "experiment=rrm",
        "model=mini",
        "task.num_train=64",
        "task.num_eval=48",
        "experiment.difficulties=[1,2,3]",
        "experiment.num_comparisons=12",
        "experiment.eval_prompts=6",
        "experiment.best_of_n=3",
        "experiment.reward_model.train.steps=3",
        "experiment.overseer.budget=2",
        # the tiny policy's answers are all wrong: a coin-flip overseer still gives every model preferences
        "experiment.overseer.miss_rate=0.5",
    )
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return run_dir, rows


def test_tiny_run_wires_each_levels_assistant_to_the_model_trained_one_level_down(tiny_run):
    run_dir, rows = tiny_run
    models = json.loads((run_dir / "rrm_models.json").read_text())
    assert set(models) == {f.key for f in training_plan(3, arm_names(2))}
    for key, m in models.items():
        if m["assistant"] is None:
            assert m["assistant_fingerprint"] is None
            continue
        helper = models[m["assistant"]]
        assert helper["level"] == m["level"] - 1
        # the pointers came from exactly the parameters that model was trained to
        assert m["assistant_fingerprint"] == helper["fingerprint"]
        assert {"feedback": key, "fingerprint": helper["fingerprint"]} in helper["assisted"]
    # different feedback trained different models (gold may tie every answer of the tiny policy: no pairs)
    learnt = [m["fingerprint"] for m in models.values() if m["pairs"] > 0]
    assert all(m["pairs"] > 0 for m in models.values() if m["source"] == "overseer")
    assert len(set(learnt)) == len(learnt) >= 8


def test_tiny_run_reports_every_arm_at_every_level_within_the_overseers_budget(tiny_run):
    _, rows = tiny_run
    for metric in ("overseer/accuracy", "rm/accuracy_gold", "policy/gold_accuracy"):
        got = {(r["level"], r["arm"]) for r in rows if r["metric"] == metric}
        assert got == {(level, arm) for level in range(3) for arm in arm_names(2)}, metric
    checks = [r for r in rows if r["metric"] == "overseer/checks"]
    assert checks and all(0 < r["value"] <= r["max_checks"] <= r["budget"] == 2 for r in checks)
    for r in rows:
        if r["metric"] == "overseer/accuracy" and r["arm"] == "gold_feedback":
            assert r["value"] == 1.0
        if r["metric"] in ("overseer/harmed", "assistant/hit"):
            assert r["level"] > 0 and r["assistant"].startswith(f"L{r['level'] - 1}:")
    # at level 0 every overseer arm is the same feedback, hence the same numbers
    level0 = {r["arm"]: r["value"] for r in rows if r["metric"] == "policy/gold_accuracy" and r["level"] == 0}
    assert level0["unassisted"] == level0["rrm_depth2"] == level0["gold_assistant"]


def test_saved_eval_scores_reproduce_the_reported_best_of_n(tiny_run):
    run_dir, rows = tiny_run
    saved = np.load(run_dir / "rrm_eval_scores.npz")
    models = json.loads((run_dir / "rrm_models.json").read_text())
    for key, m in models.items():
        level = m["level"]
        if m["source"] in ("untrained", "random"):  # controls assist; they are never a policy's reward model
            assert f"L{level}/logits/{key}" not in saved
            continue
        logits = saved[f"L{level}/logits/{key}"]  # (E, N, U)
        mask, unit_ok = saved[f"L{level}/unit_mask"], saved[f"L{level}/unit_ok"]
        gold, correct = saved[f"L{level}/gold_reward"], saved[f"L{level}/correct"]
        assert logits.shape == mask.shape == unit_ok.shape and gold.shape == (6, 3)
        assert ((unit_ok >= 0) == (mask > 0)).all()
        # gold from the unit checks, by hand: 1 if every unit passes, else passing / (units + 1)
        passing, units = (unit_ok == 1).sum(-1), (unit_ok >= 0).sum(-1)
        assert np.allclose(gold, np.where(passing == units, 1.0, passing / (units + 1)))
        reward = (-np.logaddexp(np.float32(0), -logits) * mask).sum(-1)  # log sigmoid, summed over real units
        pick = reward.argmax(1)
        for arm in arm_names(2):
            if arm_feedback(arm, level).key != key:
                continue
            got = {r["metric"]: r["value"] for r in rows if r["level"] == level and r.get("arm") == arm}
            assert got["policy/gold_reward"] == pytest.approx(gold[np.arange(6), pick].mean(), abs=1e-6)
            assert got["policy/gold_accuracy"] == pytest.approx(correct[np.arange(6), pick].mean())


def test_the_notebook_draws_policy_quality_against_difficulty(tiny_run, execute_notebook):
    printed, figures = execute_notebook(
        "rrm.ipynb", tiny_run[0], "print(arms, len(gains), sorted(per_level['metric'].unique()))"
    )
    assert printed.startswith(
        "['unassisted', 'rrm_depth1', 'rrm_depth2', 'untrained_assistant', 'random_assistant', 'gold_assistant',"
        " 'gold_feedback'] 36 "
        "['policy/chance_reward', 'policy/most_frequent_reward', 'policy/oracle_accuracy', "
        "'policy/oracle_reward', 'policy/sample_accuracy', 'policy/sample_reward']"
    ), printed
    assert figures == 2  # the main figure, and gold reward by reward-model rank


def test_views_pack_each_line_with_what_ends_it_so_a_missing_unit_costs_a_token():
    from oversight.data.tokenizer import CharTokenizer
    from oversight.experiments.rrm import pack_views
    from oversight.tasks import get_task

    task, tok = get_task("arithmetic", ops="+-"), CharTokenizer()
    p = task.sample(1, 1, seed=0)[0]
    first = p.solution.split("\n")[0]
    packed = pack_views(task, [p], [[p.solution, first]], tok, units=3, width=32, max_line_chars=16)
    unit_text = lambda j, u: tok.decode(  # noqa: E731
        [t for t, m in zip(packed["views"][0, j, u], packed["unit_tokens"][0, j, u], strict=True) if m]
    )
    lines = p.solution.split("\n")
    assert packed["unit_tokens"][0, 0, 0].sum() == len(lines[0]) + 1  # the line and its newline
    assert unit_text(0, 0) == lines[0] + "\n"
    assert packed["views"][0, 0, 2][int(packed["view_mask"][0, 0, 2].sum()) - 1] == tok.eos_id  # last: stop
    # the truncated response: its missing unit is an empty line ended by the stop token
    assert packed["unit_mask"][0, 1].tolist() == [1.0, 1.0, 0.0]
    assert packed["unit_tokens"][0, 1, 1].sum() == 1
    assert packed["views"][0, 1, 1][int(packed["view_mask"][0, 1, 1].sum()) - 1] == tok.eos_id
