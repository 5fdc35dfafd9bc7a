import numpy as np
import pytest

from oversight.overseers import Assistance, LearnedJudge
from oversight.tasks import Critique, get_task


def length_score(prompts, responses):
    """A stand-in scalar head: longer responses score higher."""
    return np.array([float(len(r)) for r in responses])


def test_judge_ranks_by_the_score_function():
    judge = LearnedJudge(length_score)
    judgement = judge.judge("prompt", ["bb", "a", "cccc"])
    assert judgement.ranking == (2, 0, 1) and judgement.preference == 2
    np.testing.assert_array_equal(judgement.scores, [2.0, 1.0, 4.0])
    assert judgement.flaws == (None, None, None)


def test_score_function_sees_the_problem_prompt_once_per_response():
    seen = []

    def score_fn(prompts, responses):
        seen.append((list(prompts), list(responses)))
        return np.zeros(len(responses))

    problem = get_task("addition").sample(1, 1, seed=0)[0]
    LearnedJudge(score_fn).judge(problem, ["1", "2"])
    assert seen == [([problem.prompt, problem.prompt], ["1", "2"])]


def test_threshold_turns_scores_into_flaw_reports():
    judgement = LearnedJudge(length_score, threshold=2.5).judge("p", ["aaa", "a"])
    assert [f.flawed for f in judgement.flaws] == [False, True]


def test_critiques_are_shown_to_the_judge_only_when_asked():
    task = get_task("addition")
    problem = task.sample(1, 1, seed=0)[0]
    seen = []

    def score_fn(prompts, responses):
        seen.extend(responses)
        return np.zeros(len(responses))

    help_ = Assistance([[Critique(0, "7")], []])
    LearnedJudge(score_fn).judge(problem, ["12", "13"], help_)
    LearnedJudge(score_fn, show_critiques=True).judge(problem, ["12", "13"], help_)
    assert seen == ["12", "13", "12\ncritique: digit 0: 7", "13"]


@pytest.mark.parametrize("bad", [np.zeros(3), np.array([1.0, np.nan]), np.zeros((2, 2))])
def test_malformed_scores_are_errors(bad):
    with pytest.raises(ValueError, match="score"):
        LearnedJudge(lambda p, r: bad).judge("p", ["a", "b"])


def test_score_function_must_be_callable():
    with pytest.raises(TypeError, match="callable"):
        LearnedJudge(42)
