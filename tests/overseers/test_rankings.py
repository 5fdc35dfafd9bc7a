import math
from itertools import combinations

import pytest

from oversight.overseers import (
    GoldOverseer,
    HumanCapacity,
    LearnedJudge,
    Ranking,
    RankingCollector,
    SimulatedHuman,
    flawed_variants,
    pairwise_agreement,
    rankings_to_dataset,
)
from oversight.tasks import get_task


@pytest.mark.parametrize("k", range(2, 10))
def test_collector_makes_k_way_rankings_with_all_k_choose_2_pairs(k):
    task = get_task("arithmetic")
    problems = task.sample(5, 4, seed=0)
    rankings = RankingCollector(GoldOverseer(task), k, seed=0).collect_from_flaws(task, problems)
    for ranking, problem in zip(rankings, problems, strict=True):
        assert ranking.k == k and sorted(ranking.order) == list(range(k))
        assert ranking.prompt == problem.prompt and ranking.problem_id == problem.id
        pairs = ranking.pairs()
        assert len(pairs) == math.comb(k, 2) and len(set(pairs)) == len(pairs)
        assert ranking.ranked()[0] == problem.solution  # gold puts the reference first
        assert len(set(ranking.responses)) == k  # flawed copies are distinct


@pytest.mark.parametrize("k", [1, 10])
def test_k_outside_2_to_9_is_an_error(k):
    with pytest.raises(ValueError, match="2..9"):
        RankingCollector(GoldOverseer(), k)


def test_presentation_order_is_shuffled():
    task = get_task("addition")
    problems = task.sample(200, 3, seed=0)
    rankings = RankingCollector(GoldOverseer(task), 3, seed=0).collect_from_flaws(task, problems)
    where = [r.responses.index(p.solution) for r, p in zip(rankings, problems, strict=True)]
    assert all(where.count(i) > 40 for i in range(3))


def test_more_responses_than_k_are_subsampled_and_fewer_are_an_error():
    task = get_task("sorting")
    p = task.sample(1, 6, seed=0)[0]
    responses = flawed_variants(task, p, 6) + [p.solution]
    ranking = RankingCollector(GoldOverseer(task), 4, seed=1).rank_one(p, responses)
    assert ranking.k == 4 and set(ranking.responses) <= set(responses)
    with pytest.raises(ValueError, match="at least k=4"):
        RankingCollector(GoldOverseer(task), 4).rank_one(p, responses[:3])


def test_any_overseer_works_including_a_learned_judge_on_prompt_text():
    judge = LearnedJudge(lambda prompts, responses: [len(r) for r in responses])
    ranking = RankingCollector(judge, 3, seed=0).rank_one("prompt", ["a", "bbb", "cc"])
    assert ranking.ranked() == ["bbb", "cc", "a"] and ranking.problem_id == ""


def test_capacity_limited_rankings_agree_with_gold_less_than_gold_does():
    task = get_task("arithmetic")
    problems = task.sample(150, 6, seed=0)
    responses = [flawed_variants(task, p, 3, seed=0) + [p.solution] for p in problems]
    gold = RankingCollector(GoldOverseer(task), 4, seed=0).collect(problems, responses)
    human = SimulatedHuman(HumanCapacity(budget=2), task, seed=0)
    weak = RankingCollector(human, 4, seed=0).collect(problems, responses)
    full = SimulatedHuman(HumanCapacity(budget=8), task, seed=0)
    strong = RankingCollector(full, 4, seed=0).collect(problems, responses)

    def best_is_reference(rankings):
        return sum(r.ranked()[0] == p.solution for r, p in zip(rankings, problems, strict=True)) / len(
            problems
        )

    assert best_is_reference(gold) == 1.0
    assert best_is_reference(strong) == 1.0  # checks every unit without error: finds every flaw
    assert best_is_reference(weak) < 0.8

    def agreement_with_gold(rankings):
        return sum(pairwise_agreement(g, r) for g, r in zip(gold, rankings, strict=True)) / len(problems)

    assert agreement_with_gold(weak) < agreement_with_gold(strong) < 1.0  # strong ties the flawed ones


def test_pairwise_agreement_compares_by_text_whatever_the_shown_order():
    a = Ranking("p", "q", ("x", "y", "z"), (0, 1, 2), (3.0, 2.0, 1.0))
    b = Ranking("p", "q", ("z", "y", "x"), (2, 1, 0), (1.0, 2.0, 3.0))
    c = Ranking("p", "q", ("x", "y", "z"), (2, 1, 0), (1.0, 2.0, 3.0))
    assert pairwise_agreement(a, b) == 1.0 and pairwise_agreement(a, c) == 0.0
    assert [p for p in combinations(range(3), 2)] == a.pairs()


def test_rankings_round_trip_through_records_and_datasets():
    task = get_task("addition")
    problems = task.sample(4, 2, seed=0)
    rankings = RankingCollector(GoldOverseer(task), 3, seed=0).collect_from_flaws(task, problems)
    assert [Ranking.from_record(r.to_record()) for r in rankings] == rankings
    ds = rankings_to_dataset(rankings)
    assert [Ranking.from_record(row) for row in ds] == rankings
    with pytest.raises(ValueError, match="permutation"):
        Ranking.from_record({**rankings[0].to_record(), "order": [0, 0, 1]})
