"""Overseers: sources of judgement scored against gold, from the gold oracle to capacity-limited humans.

    from oversight.overseers import GoldOverseer, HumanCapacity, SimulatedHuman, RankingCollector
    human = SimulatedHuman(HumanCapacity(budget=2, miss_rate=0.1, false_alarm_rate=0.1), seed=0)
    judgement = human.judge(problem, [response_a, response_b])   # .scores, .ranking, .preference, .flaws
    rankings = RankingCollector(human, k=4).collect_from_flaws(task, problems)

Every overseer implements `judge(problem, responses, assistance=None) -> Judgement`.
"""

from oversight.overseers.base import Assistance, FlawReport, Judgement, Overseer, rank
from oversight.overseers.gold import GoldOverseer
from oversight.overseers.human import (
    HumanCapacity,
    SimulatedHuman,
    detection_rate,
    detection_rate_at,
    error_rate_for_agreement,
    flag_rate,
    gold_agreement,
    inter_labeller_agreement,
)
from oversight.overseers.learned import LearnedJudge
from oversight.overseers.rankings import (
    MAX_K,
    MIN_K,
    Ranking,
    RankingCollector,
    flawed_variants,
    pairwise_agreement,
    rankings_to_dataset,
)

__all__ = [
    "MAX_K",
    "MIN_K",
    "Assistance",
    "FlawReport",
    "GoldOverseer",
    "HumanCapacity",
    "Judgement",
    "LearnedJudge",
    "Overseer",
    "Ranking",
    "RankingCollector",
    "SimulatedHuman",
    "detection_rate",
    "detection_rate_at",
    "error_rate_for_agreement",
    "flag_rate",
    "flawed_variants",
    "gold_agreement",
    "inter_labeller_agreement",
    "pairwise_agreement",
    "rank",
    "rankings_to_dataset",
]
