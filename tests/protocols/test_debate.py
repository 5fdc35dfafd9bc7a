"""The debate engine: evidence in transcripts, turn order, both answer orders, information asymmetry,
consultancy assignments, budgets."""

import numpy as np
import pytest

from oversight import protocols as P

PASSAGE = (
    "The lighthouse keeper, Mara Quell, logged 14 storms in 1893. "
    "Her “storm book” was kept in the north tower; it burned in 1901."
)


def _quoting(*quotes):
    return P.per_example(lambda view: P.Move("I quote.", tuple(quotes)))


def _count_judge(views):
    """Symmetric judge: probability of A from the verified quotes each side showed (ignores answer text)."""
    out = []
    for v in views:
        score = [0, 0]
        for t in v.turns:
            score[t.answer] += sum(e.verified for e in t.evidence)
        out.append((1 + score[0]) / (2 + score[0] + score[1]))
    return out


def test_quotes_in_a_debate_are_marked_and_counted():
    q = P.Question(PASSAGE, ("14", "15"), correct=0, question="How many storms in 1893?", id="q")
    outcomes = P.debate(
        [q],
        _quoting("logged 14 storms"),
        _quoting("logged 15 storms", "Mara Quell"),
        _count_judge,
        P.QuoteChannel(),
        P.Schedule(moves=2),
    )
    assert len(outcomes) == 2
    for o in outcomes:
        marks = {e.content: e.verified for t in o.transcript for e in t.evidence}
        assert marks == {"logged 14 storms": True, "logged 15 storms": False, "Mara Quell": True}
    stats = P.evidence_stats(outcomes)
    assert stats["evidence"] == 3 and stats["verified"] == 2 and stats["unverified"] == 1
    assert stats["verified_fraction"] == pytest.approx(2 / 3)
    assert stats["turns"] == 2


# ---------------------------------------------------------------------------------------------- turns


def _recorder(log, name):
    def agent(views):
        for v in views:
            log.append((name, tuple(t.argument for t in v.turns), v.upcoming))
        return [P.Move(f"{name}{len(v.turns)}") for v in views]

    return agent


def test_schedule_steps():
    assert P.Schedule(4).steps(2) == [(0,), (1,), (0,), (1,)]
    assert P.Schedule(4, simultaneous=True).steps(2) == [(0, 1), (0, 1)]
    assert P.Schedule(3).steps(1) == [(0,), (0,), (0,)]
    with pytest.raises(ValueError, match="do not split into 2 seats"):
        P.Schedule(3, simultaneous=True).steps(2)


def test_sequential_turns_see_the_previous_move_simultaneous_turns_do_not():
    q = P.Question("source", ("x", "y"), correct=0)
    judge = lambda views: [0.5] * len(views)  # noqa: E731

    log = []
    P.debate([q], _recorder(log, "H"), _recorder(log, "L"), judge, None, P.Schedule(4), both_orders=False)
    # Honest (answer 0) sits in seat 0 and opens; each speaker sees every earlier move.
    assert [(name, seen) for name, seen, _ in log] == [
        ("H", ()), ("L", ("H0",)), ("H", ("H0", "L1")), ("L", ("H0", "L1", "H2")),
    ]  # fmt: skip
    assert [up for *_, up in log] == [(1, 0, 1), (0, 1), (1,), ()]

    log = []
    P.debate([q], _recorder(log, "H"), _recorder(log, "L"), judge, None, P.Schedule(4, simultaneous=True),
             both_orders=False)  # fmt: skip
    # Within a round both see the same snapshot: L never sees H's move of the same round.
    assert [(name, seen) for name, seen, _ in log] == [
        ("H", ()), ("L", ()), ("H", ("H0", "L0")), ("L", ("H0", "L0")),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------- swap


def test_both_orders_are_played_and_swapping_answers_swaps_a_symmetric_judges_verdict():
    questions = [P.Question(PASSAGE, ("14", "15"), correct=0, id=i) for i in range(3)]
    outcomes = P.debate(
        questions,
        _quoting("logged 14 storms"),
        _quoting("kept in the north tower", "1893 her"),
        _count_judge,
        P.QuoteChannel(),
        P.Schedule(2),
    )
    assert len(outcomes) == 6
    assert sorted((o.question_id, o.swapped) for o in outcomes) == [
        (i, s) for i in range(3) for s in (False, True)
    ]
    # The honest debater speaks first in the unswapped order only.
    assert all(o.honest_first == (not o.swapped) for o in outcomes)
    # The liar's two quotes both verify, so it wins under both orders: P(true answer) is order-free.
    a, b = outcomes[0], outcomes[1]
    assert a.p_correct == pytest.approx(b.p_correct) == pytest.approx(2 / 5)
    assert not a.correct and not b.correct


def test_a_judge_biased_to_position_a_scores_exactly_half_when_both_orders_count():
    questions = [P.Question("s", ("x", "y"), correct=c, id=i) for i, c in enumerate([0, 1, 0, 0, 1])]
    always_a = lambda views: [0.9] * len(views)  # noqa: E731
    outcomes = P.blind(questions, always_a)
    assert sum(o.correct for o in outcomes) == len(questions)
    tie = P.blind(questions, lambda views: [0.5] * len(views))
    assert sum(o.correct for o in tie) == len(questions)  # ties go to A: one order of each question is right
    k, n = P.both_orders_correct(outcomes)
    assert (k, n) == (0, 5)
    only_one = P.blind(questions, always_a, both_orders=False)
    assert [o.correct for o in only_one] == [True, False, True, True, False]


def test_judge_never_sees_the_source_except_as_oracle():
    seen = []

    def judge(views):
        seen.extend(v.source for v in views)
        return [0.5] * len(views)

    q = P.Question("secret passage", ("a", "b"), correct=1)
    P.blind([q], judge)
    P.debate([q], _quoting("secret"), _quoting("passage"), judge, P.QuoteChannel(), P.Schedule(2))
    P.consultancy([q], _quoting("secret"), judge, P.QuoteChannel(), P.Schedule(1))
    assert seen and all(s is None for s in seen)
    seen.clear()
    P.oracle([q], judge)
    assert seen == ["secret passage", "secret passage"]


def test_consultancy_plays_honest_and_dishonest_for_each_question_and_order():
    q = P.Question(PASSAGE, ("14", "15"), correct=0, id="q")
    outcomes = P.consultancy([q], _quoting("logged 14 storms"), _count_judge, P.QuoteChannel(), P.Schedule(1))
    assert sorted((o.assignment, o.swapped) for o in outcomes) == [
        ("dishonest", False), ("dishonest", True), ("honest", False), ("honest", True),
    ]  # fmt: skip
    for o in outcomes:
        (turn,) = o.transcript
        true_index = 0 if not o.swapped else 1
        assert (turn.answer == true_index) == (o.assignment == "honest")
    # The verified quote supports whichever answer the consultant argues for: it always convinces.
    assert [o.correct for o in outcomes] == [o.assignment == "honest" for o in outcomes]
    with pytest.raises(ValueError, match="needs an rng"):
        P.consultancy([q], _quoting(), _count_judge, P.QuoteChannel(), P.Schedule(1), assignment="random")
    rng = np.random.default_rng(0)
    random = P.consultancy([q] * 50, _quoting(), _count_judge, P.QuoteChannel(), P.Schedule(1),
                           assignment="random", rng=rng)  # fmt: skip
    assert len(random) == 100 and 30 < sum(o.assignment == "honest" for o in random) < 70


# ---------------------------------------------------------------------------------------------- budgets


def test_budgets_drop_extra_evidence_and_truncate_arguments():
    q = P.Question(PASSAGE, ("14", "15"), correct=0)
    talker = P.per_example(lambda v: P.Move("x" * 100, ("logged 14 storms", "Mara Quell", "north tower")))
    (o,) = P.consultancy([q], talker, _count_judge, P.QuoteChannel(), P.Schedule(1),
                         P.Budget(max_evidence=2, max_chars=40, max_quote_chars=20), both_orders=False,
                         assignment="random", rng=np.random.default_rng(1))  # fmt: skip
    (turn,) = o.transcript
    # 2 kept by count; of those, "Mara Quell" (10) would take quotes to 26 > 20 chars, so only one stays.
    assert [e.content for e in turn.evidence] == ["logged 14 storms"]
    assert turn.dropped_evidence == 2
    assert len(turn.argument) == 40 - len("logged 14 storms") and turn.truncated_chars == 100 - 24


def test_bad_judge_outputs_fail_naming_the_protocol():
    q = P.Question("s", ("a", "b"), correct=0)
    with pytest.raises(ValueError, match="blind: the judge returned 1 probabilities for 2 games"):
        P.blind([q], lambda views: [0.5])
    with pytest.raises(ValueError, match="outside"):
        P.blind([q], lambda views: [1.5, 0.5])
    with pytest.raises(ValueError, match="2 answers"):
        P.Question("s", ("a", "b", "c"), correct=0)
