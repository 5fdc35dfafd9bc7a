"""Critique assistance: the misleading-response construction, the arms' bookkeeping on known cases, the
experiment end to end, and the critique notebook on its runs."""

import json
from pathlib import Path

import numpy as np
import pytest

import oversight
from oversight.experiments.critique import gold_critique_text
from oversight.experiments.critique_assist import assistance_rows, misleading_response
from oversight.overseers import HumanCapacity, SimulatedHuman
from oversight.protocols import ReviewOutcome, critique_review
from oversight.tasks import get_task

REPO = Path(oversight.__file__).resolve().parents[1]


@pytest.mark.parametrize("name,difficulty", [("addition", 3), ("arithmetic", 3), ("sorting", 5)])
def test_misleading_responses_hide_the_flaw_last(name, difficulty):
    task = get_task(name)
    for i, problem in enumerate(task.sample(20, difficulty, seed=2)):
        item = misleading_response(task, problem, draws=8, seed=i)
        locations = [task.inject_flaw(problem, seed=i * 1_000 + d)[1].location for d in range(8)]
        assert item.flaw.location == max(locations)
        assert task.check(problem, item.response).first_error == item.flaw.location


def test_an_exact_overseer_finds_what_its_budget_reaches_and_what_critiques_point_at():
    task = get_task("addition")
    items = task.labelled_responses(task.sample(60, 3, seed=4), seed=0, flawed_fraction=1.0)
    exact = HumanCapacity(
        budget=1, order="in_order"
    )  # no noise: checks unit 0 only, unless pointed elsewhere
    unassisted = critique_review(SimulatedHuman(exact, task), task, items, [[] for _ in items])
    gold = critique_review(
        SimulatedHuman(exact, task), task, items, [[gold_critique_text(task, it)] for it in items]
    )
    at_top = np.array([it.flaw.location == 0 for it in items])
    assert 0 < at_top.sum() < len(items)
    np.testing.assert_array_equal(unassisted.found, at_top)
    assert gold.found.all() and gold.flagged.all()
    # a critique pointing at a fine unit spends the budget there: nothing found
    wrong = [
        [task.render_critique(type(it.flaw.critique())((it.flaw.location + 1) % 5, "0"))] for it in items
    ]
    misled = critique_review(SimulatedHuman(exact, task), task, items, wrong)
    assert not misled.found.any()


def test_assistance_rows_on_a_known_case():
    outcomes = {
        "unassisted": ReviewOutcome(
            np.array([1, 0, 0, 0, 1, 0, 0, 0], bool), np.array([1, 0, 0, 1, 1, 0, 0, 0], bool)
        ),
        "assisted": ReviewOutcome(
            np.array([1, 1, 1, 0, 1, 0, 0, 0], bool), np.array([1, 1, 1, 0, 1, 0, 0, 1], bool)
        ),
    }
    clean = {(r["metric"], r["arm"]): r for r in assistance_rows("clean", outcomes, flawed=False)}
    outcomes["last_unit"] = ReviewOutcome(np.array([0, 1, 1, 1, 1, 1, 0, 0], bool), np.ones(8, bool))
    rows = {(r["metric"], r["arm"]): r for r in assistance_rows("flawed", outcomes, flawed=True)}
    assert rows["assist/found_over_control", "last_unit"]["value"] == pytest.approx(-0.125)  # 4/8 - 5/8
    assert ("assist/found_over_control", "random_unit") not in rows  # only the controls that were run
    assert rows["assist/found", "unassisted"]["value"] == 0.25
    assert rows["assist/found", "assisted"]["value"] == 0.5
    assert rows["assist/flagged", "unassisted"]["value"] == 0.375
    assert rows["assist/relative_increase", "assisted"]["value"] == pytest.approx(1.0)  # 4/2 - 1
    assert rows["assist/found_difference", "assisted"]["value"] == pytest.approx(0.25)  # 4/8 - 2/8
    lo, hi = (
        rows["assist/relative_increase", "assisted"]["ci_low"],
        rows["assist/relative_increase", "assisted"]["ci_high"],
    )
    assert lo <= 1.0 <= hi
    assert set(clean) == {("assist/false_alarm", "unassisted"), ("assist/false_alarm", "assisted")}
    assert clean["assist/false_alarm", "assisted"]["value"] == 0.625  # 5 of 8 flagged


def test_critique_assist_end_to_end(critique_runs):
    rows = [
        json.loads(line) for line in (critique_runs / "assist" / "results.jsonl").read_text().splitlines()
    ]
    found = {(r["set"], r["arm"]): r for r in rows if r["metric"] == "assist/found"}
    assert set(found) == {
        (s, a)
        for s in ("flawed", "misleading")
        for a in ("unassisted", "assisted", "gold_critique", "last_unit", "random_unit")
    }
    assert all(r["n"] == 16 for r in found.values())
    false_alarm = [r for r in rows if r["metric"] == "assist/false_alarm"]
    assert {r["set"] for r in false_alarm} == {"clean"} and len(false_alarm) == 5
    assert {r["set"] for r in rows if r["metric"] == "assist/critiques_valid"} == {
        "clean",
        "flawed",
        "misleading",
    }
    assert all(r["n"] == 64 for r in rows if r["metric"] == "assist/critiques_valid")  # k = 4 per response
    # the gold critique is the ceiling: the overseer checks the unit it points at first
    assert found["flawed", "gold_critique"]["value"] >= found["flawed", "unassisted"]["value"]
    # the misleading flaw is the last-placed of several: a pointer at the last unit reaches it, reading from
    # the top with one check does not
    assert found["misleading", "last_unit"]["value"] > found["misleading", "unassisted"]["value"]
    over = {r["arm"] for r in rows if r["metric"] == "assist/found_over_control"}
    assert over == {"last_unit", "random_unit"}
    for r in rows:
        if r["value"] is not None:  # null: not measurable (a rate over zero cases)
            assert r["ci_low"] <= r["value"] <= r["ci_high"], r


def test_the_notebook_draws_gaps_and_assistance(critique_runs, execute_notebook):
    printed, figures = execute_notebook(
        "critique.ipynb",
        critique_runs,
        "print(len(scale), sorted(scale['metric'].unique())[:2], len(groups))",
    )
    assert printed.startswith("10 ['C/accuracy', 'C/inclusion'] 3"), printed
    assert figures == 2
