import numpy as np
import pytest

from oversight.overseers import GoldOverseer
from oversight.tasks import get_task


@pytest.mark.parametrize("name", ["arithmetic", "addition", "sorting", "sat", "code"])
def test_gold_prefers_the_reference_over_any_flawed_copy_and_reports_where(name):
    task = get_task(name)
    gold = GoldOverseer()  # finds the task from each problem's name
    for i, p in enumerate(task.sample(20, 2, seed=0)):
        flawed, record = task.inject_flaw(p, seed=i)
        judgement = gold.judge(p, [flawed, p.solution])
        assert judgement.preference == 1
        assert judgement.scores[1] == 1.0 and 0.0 <= judgement.scores[0] < 1.0
        report = judgement.flaws[0]
        assert report.flawed and report.location == record.location
        assert not judgement.flaws[1].flawed
        assert len(report.checked) == len(task.unit_checks(p, flawed))  # gold checks everything


def test_fewer_wrong_units_score_higher():
    task = get_task("addition")
    p = task.sample(1, 5, seed=0)[0]  # six-digit operands
    one_wrong = p.solution[:-1] + str((int(p.solution[-1]) + 1) % 10)
    garbage = "x" * len(p.solution)
    judgement = GoldOverseer(task).judge(p, [garbage, one_wrong, p.solution])
    assert judgement.ranking == (2, 1, 0)


def test_ties_are_broken_at_random_not_by_position():
    task = get_task("addition")
    p = task.sample(1, 1, seed=0)[0]
    gold = GoldOverseer(task, seed=0)
    firsts = [gold.judge(p, [p.solution, p.solution]).preference for _ in range(200)]
    assert 60 < sum(firsts) < 140  # both positions win sometimes


def test_gold_needs_the_problem_and_the_matching_task():
    task = get_task("addition")
    p = task.sample(1, 1, seed=0)[0]
    with pytest.raises(TypeError, match="Problem"):
        GoldOverseer(task).judge(p.prompt, [p.solution])
    with pytest.raises(ValueError, match="from task 'addition'"):
        GoldOverseer(get_task("sorting")).judge(p, [p.solution])
    with pytest.raises(ValueError, match="at least one"):
        GoldOverseer(task).judge(p, [])
    assert isinstance(GoldOverseer(task).judge(p, [p.solution]).scores, np.ndarray)
