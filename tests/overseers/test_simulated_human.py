"""The simulated human's measured behaviour matches its configured capacity.

Every rate is checked against its closed form with a Wilson score interval at z = 3.29 (99.9% two-sided), on
fixed seeds. The responses are arithmetic chains of 7 steps + the answer = 8 units, with one wrong
intermediate result (later steps consistent with it), so exactly one unit is wrong.
"""

import math

import numpy as np
import pytest

from oversight.overseers import (
    Assistance,
    HumanCapacity,
    SimulatedHuman,
    detection_rate,
    detection_rate_at,
    error_rate_for_agreement,
    flag_rate,
    gold_agreement,
    inter_labeller_agreement,
)
from oversight.tasks import Critique, get_task

Z = 3.29  # 99.9% two-sided
N_UNITS = 8


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def assert_rate(successes: int, n: int, expected: float, what: str) -> None:
    low, high = wilson(successes, n)
    assert low <= expected <= high, (
        f"{what}: measured {successes}/{n} = {successes / n:.3f}, expected {expected:.3f}"
    )


@pytest.fixture(scope="module")
def flawed_set():
    task = get_task("arithmetic")
    problems = task.sample(2000, 6, seed=0)
    items = []
    for i, p in enumerate(problems):
        flawed, record = task.inject_flaw(p, seed=i, flaw_type="wrong_result")
        assert len(task.unit_checks(p, flawed)) == N_UNITS
        items.append((p, flawed, record))
    return task, items


SWEEP = [HumanCapacity(budget=b, miss_rate=e, false_alarm_rate=e) for b in (1, 2, 4, 8) for e in (0.0, 0.2)]


@pytest.mark.parametrize("capacity", SWEEP, ids=lambda c: f"budget{c.budget}-err{c.miss_rate}")
def test_detection_rate_matches_configured_capacity(flawed_set, capacity):
    task, items = flawed_set
    human = SimulatedHuman(capacity, task, seed=capacity.budget * 10 + int(capacity.miss_rate * 10))
    caught = sum(record.location in human.review(p, flawed).locations for p, flawed, record in items)
    assert_rate(caught, len(items), detection_rate(capacity, N_UNITS), "detection")


def test_checking_2_of_8_steps_at_random_catches_a_single_step_flaw_a_quarter_of_the_time(flawed_set):
    task, items = flawed_set
    human = SimulatedHuman(HumanCapacity(budget=2), task, seed=1)
    caught = sum(record.location in human.review(p, flawed).locations for p, flawed, record in items)
    assert detection_rate(HumanCapacity(budget=2), N_UNITS) == 0.25
    assert_rate(caught, len(items), 0.25, "2 of 8 at random")


@pytest.mark.parametrize("capacity", SWEEP, ids=lambda c: f"budget{c.budget}-err{c.miss_rate}")
def test_agreement_with_gold_matches_configured_capacity(flawed_set, capacity):
    task, items = flawed_set
    human = SimulatedHuman(capacity, task, seed=7 + capacity.budget)
    agree = 0
    for i, (p, flawed, _) in enumerate(items):
        responses = [flawed, p.solution] if i % 2 else [p.solution, flawed]
        agree += responses[human.judge(p, responses).preference] == p.solution
    assert_rate(agree, len(items), gold_agreement(capacity, N_UNITS), "agreement with gold")


@pytest.mark.parametrize("budget, error", [(2, 0.1), (4, 0.3)])
def test_false_alarm_rate_on_clean_responses_matches_configuration(flawed_set, budget, error):
    task, items = flawed_set
    capacity = HumanCapacity(budget=budget, miss_rate=0.0, false_alarm_rate=error)
    human = SimulatedHuman(capacity, task, seed=3)
    flagged = sum(human.review(p, p.solution).flawed for p, _, _ in items)
    assert_rate(flagged, len(items), flag_rate(capacity, N_UNITS, 0), "false alarms")
    assert flag_rate(capacity, N_UNITS, 0) == pytest.approx(1 - (1 - error) ** budget)


@pytest.mark.parametrize("miss", [0.0, 0.25, 0.5])
def test_critique_pointing_at_the_flaw_is_caught_at_the_configured_rate(flawed_set, miss):
    task, items = flawed_set
    capacity = HumanCapacity(budget=1, miss_rate=miss, false_alarm_rate=miss)
    human = SimulatedHuman(capacity, task, seed=11)
    caught = 0
    for p, flawed, record in items:
        report = human.judge(p, [flawed], Assistance([[record.critique()]])).flaws[0]
        caught += record.location in report.locations
        assert report.checked[0] == record.location  # it looked where the critique pointed first
    assert_rate(
        caught, len(items), detection_rate(capacity, N_UNITS, critique_points_at_flaw=True), "assisted"
    )
    # the same budget without the critique finds far fewer
    assert detection_rate(capacity, N_UNITS) == pytest.approx((1 - miss) / N_UNITS)


def test_a_misleading_critique_spends_budget_where_there_is_no_flaw(flawed_set):
    task, items = flawed_set
    capacity = HumanCapacity(budget=3)
    human = SimulatedHuman(capacity, task, seed=12)
    caught = 0
    for p, flawed, record in items:
        elsewhere = (record.location + 1) % N_UNITS
        critique = task.render_critique(Critique(elsewhere, "0+0=0"))
        caught += record.location in human.review(p, flawed, [critique]).locations
    assert_rate(caught, len(items), 2 / 7, "misled")  # 2 remaining looks among the other 7 units


def test_trusting_labeller_accepts_critiques_without_checking(flawed_set):
    task, items = flawed_set
    human = SimulatedHuman(HumanCapacity(budget=0, assistance="trust"), task, seed=0)
    p, flawed, record = items[0]
    report = human.review(p, p.solution, [Critique(3, "x")])
    assert report.flawed and report.locations == (3,) and report.checked == ()
    ignoring = SimulatedHuman(HumanCapacity(budget=0, assistance="ignore"), task, seed=0)
    assert not ignoring.review(p, flawed, [record.critique()]).flawed


def test_in_order_labeller_catches_exactly_the_flaws_within_its_budget(flawed_set):
    task, items = flawed_set
    capacity = HumanCapacity(budget=3, order="in_order")
    human = SimulatedHuman(capacity, task, seed=0)
    for p, flawed, record in items[:300]:
        report = human.review(p, flawed)
        assert report.checked == (0, 1, 2)
        assert (record.location in report.locations) == (record.location < 3)
        assert detection_rate_at(capacity, N_UNITS, record.location) == float(record.location < 3)


def test_in_order_detection_with_errors_matches_the_per_location_rate(flawed_set):
    task, items = flawed_set
    capacity = HumanCapacity(budget=5, miss_rate=0.3, order="in_order")
    human = SimulatedHuman(capacity, task, seed=4)
    caught = sum(record.location in human.review(p, flawed).locations for p, flawed, record in items)
    expected = np.mean([detection_rate_at(capacity, N_UNITS, r.location) for _, _, r in items])
    assert_rate(caught, len(items), float(expected), "in order")


def test_agreement_is_tunable_to_instructgpt_inter_labeller_level(flawed_set):
    task, items = flawed_set
    error = error_rate_for_agreement(0.73, budget=8, n_units=N_UNITS, between="labellers")
    capacity = HumanCapacity.with_error_rate(error, budget=8)
    assert inter_labeller_agreement(gold_agreement(capacity, N_UNITS)) == pytest.approx(0.73, abs=1e-6)
    first, second = SimulatedHuman(capacity, task, seed=21), SimulatedHuman(capacity, task, seed=22)
    agree = 0
    for i, (p, flawed, _) in enumerate(items):
        responses = [flawed, p.solution] if i % 2 else [p.solution, flawed]
        agree += first.judge(p, responses).preference == second.judge(p, responses).preference
    assert_rate(agree, len(items), 0.73, "inter-labeller agreement")


@pytest.mark.parametrize("target, budget", [(0.6, 2), (0.8, 6)])
def test_error_rate_for_agreement_hits_the_target_agreement_with_gold(flawed_set, target, budget):
    task, items = flawed_set
    error = error_rate_for_agreement(target, budget=budget, n_units=N_UNITS)
    capacity = HumanCapacity.with_error_rate(error, budget=budget)
    assert gold_agreement(capacity, N_UNITS) == pytest.approx(target, abs=1e-9)
    human = SimulatedHuman(capacity, task, seed=31)
    agree = 0
    for i, (p, flawed, _) in enumerate(items):
        responses = [flawed, p.solution] if i % 2 else [p.solution, flawed]
        agree += responses[human.judge(p, responses).preference] == p.solution
    assert_rate(agree, len(items), target, "tuned agreement")


def test_unreachable_agreement_is_an_error_naming_the_ceiling():
    with pytest.raises(ValueError, match="error-free labellers reach 0.625"):
        error_rate_for_agreement(0.73, budget=2, n_units=8)


def test_same_seed_same_judgements(flawed_set):
    task, items = flawed_set
    capacity = HumanCapacity(budget=3, miss_rate=0.2, false_alarm_rate=0.1)
    runs = []
    for _ in range(2):
        human = SimulatedHuman(capacity, task, seed=5)
        runs.append([human.judge(p, [flawed, p.solution]).ranking for p, flawed, _ in items[:50]])
    assert runs[0] == runs[1]


def test_bad_capacity_is_rejected():
    with pytest.raises(ValueError, match="budget"):
        HumanCapacity(budget=-1)
    with pytest.raises(ValueError, match="miss_rate"):
        HumanCapacity(miss_rate=1.5)
    with pytest.raises(ValueError, match="order"):
        HumanCapacity(order="sideways")
    with pytest.raises(ValueError, match="assistance"):
        HumanCapacity(assistance="maybe")


def test_needs_the_problem_not_just_the_prompt(flawed_set):
    task, items = flawed_set
    with pytest.raises(TypeError, match="Problem"):
        SimulatedHuman(task=task).judge(items[0][0].prompt, ["x"])
