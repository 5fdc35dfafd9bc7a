"""Properties every task must have, checked over many random seeds (seeded loops, no hypothesis).

For each task: the reference solution passes gold; every injected flaw is found by gold at the recorded
location; the critique checker accepts the true critique and rejects critiques pointing elsewhere, claiming
no flaw, or correcting wrongly; gold never raises on garbage.
"""

import random
import string

import pytest

from oversight.data.tokenizer import CharTokenizer
from oversight.tasks import Critique, available_tasks, get_task

BUILT_IN = ["arithmetic", "addition", "sorting", "sat", "code"]
# (difficulties, problems per difficulty): the code task is slower per problem and its hardest bucket is small
PLAN = {
    "arithmetic": (range(1, 9), 40),
    "addition": (range(1, 9), 40),
    "sorting": (range(1, 9), 40),
    "sat": (range(1, 9), 30),
    "code": (range(1, 6), 30),
}


def _cases(name):
    task = get_task(name)
    difficulties, n = PLAN[name]
    for d in difficulties:
        for seed in range(2):
            yield from task.sample(n // 2, d, seed)


def test_registry_lists_every_built_in_task():
    assert set(BUILT_IN) <= set(available_tasks())


def test_unknown_task_name_is_an_error_listing_the_known_names():
    with pytest.raises(ValueError, match="known tasks: .*arithmetic.*sorting"):
        get_task("arithmatic")


def test_unknown_option_is_an_error_naming_the_task():
    with pytest.raises(ValueError, match="'addition'"):
        get_task("addition", digits=3)


@pytest.mark.parametrize("name", BUILT_IN)
def test_reference_solution_passes_gold(name):
    task = get_task(name)
    for problem in _cases(name):
        verdict = task.check(problem, problem.solution)
        assert verdict.correct and verdict.first_error is None, (problem.id, verdict)
        assert all(task.unit_checks(problem, problem.solution))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_injected_flaw_is_found_by_gold_at_its_recorded_location(name):
    task = get_task(name)
    seen_types = set()
    for i, problem in enumerate(_cases(name)):
        flawed, record = task.inject_flaw(problem, seed=i)
        seen_types.add(record.flaw_type)
        assert record.flaw_type in task.flaw_types
        assert flawed != problem.solution
        verdict = task.check(problem, flawed)
        assert not verdict.correct and verdict.first_error == record.location, (problem.id, record, verdict)
        assert not task.unit_checks(problem, flawed)[record.location]
        assert record.original != record.flawed
    assert seen_types == set(task.flaw_types)


@pytest.mark.parametrize("name", BUILT_IN)
def test_critique_checker_accepts_the_true_critique_and_rejects_one_pointing_elsewhere(name):
    task = get_task(name)
    rng = random.Random(0)
    for i, problem in enumerate(_cases(name)):
        flawed, record = task.inject_flaw(problem, seed=i)
        true = task.check_critique(problem, flawed, record.critique(), record)
        assert true.valid and true.real_flaw and true.correction_right and true.names_injected, (record, true)
        # the same critique as text, in the task's own format
        assert task.check_critique(problem, flawed, task.render_critique(record.critique())).valid
        # pointing at a unit that is not wrong, with the correction that unit really needs
        ok = task.unit_checks(problem, flawed)
        elsewhere = [u for u, good in enumerate(ok) if good]
        if elsewhere:
            u = rng.choice(elsewhere)
            wrong_place = Critique(u, task.correction(problem, flawed, u) or record.correction)
            verdict = task.check_critique(problem, flawed, wrong_place, record)
            assert not verdict.valid and not verdict.real_flaw and verdict.names_injected is False
        # a pointer past the end, and "no flaw"
        assert not task.check_critique(problem, flawed, Critique(len(ok) + 3, record.correction)).valid
        assert not task.check_critique(problem, flawed, Critique(None)).valid
        # the right place with the flawed content as "correction"
        wrong_fix = task.check_critique(problem, flawed, Critique(record.location, record.flawed.strip()))
        assert wrong_fix.real_flaw and not wrong_fix.correction_right and not wrong_fix.valid


@pytest.mark.parametrize("name", BUILT_IN)
def test_on_a_correct_solution_only_no_flaw_is_a_valid_critique(name):
    task = get_task(name)
    for problem in list(_cases(name))[:30]:
        assert task.check_critique(problem, problem.solution, Critique(None)).valid
        assert task.check_critique(problem, problem.solution, "no flaw").valid
        claim = Critique(0, task.correction(problem, problem.solution, 0))
        verdict = task.check_critique(problem, problem.solution, claim)
        assert not verdict.valid and verdict.claims_flaw and not verdict.real_flaw


@pytest.mark.parametrize("name", BUILT_IN)
def test_critique_text_round_trips_through_render_and_parse(name):
    task = get_task(name)
    for i, problem in enumerate(list(_cases(name))[:20]):
        _, record = task.inject_flaw(problem, seed=i)
        assert task.parse_critique(task.render_critique(record.critique())) == record.critique()
    assert task.parse_critique("no flaw") == Critique(None)
    assert task.parse_critique("this is not a critique") is None


@pytest.mark.parametrize("name", BUILT_IN)
def test_gold_never_raises_on_garbage_and_never_calls_it_correct(name):
    task = get_task(name)
    rng = random.Random(1)
    alphabet = string.printable + "éλ\x00" + "9" * 20
    problems = list(_cases(name))[:15]
    for problem in problems:
        garbage = [
            "",
            "\n\n",
            "9" * 6000,
            problem.solution[: len(problem.solution) // 2],
            problem.solution + "\nextra",
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))),
        ]
        if name != "code":  # for code, joining a two-line function onto one line can be the same program
            garbage.append(problem.solution.replace("\n", " "))
        for text in garbage:
            verdict = task.check(problem, text)
            if text.strip() != problem.solution.strip():
                assert not verdict.correct, (problem.id, text[:80])
                assert verdict.first_error is not None and verdict.first_error >= 0
            task.check_critique(problem, text, "no flaw")
            task.check_critique(problem, text, f"{task.unit} 0: {text[:30]}")


@pytest.mark.parametrize("name", BUILT_IN)
def test_sampling_is_deterministic_and_prefix_stable(name):
    task = get_task(name)
    a = task.sample(6, 2, seed=7)
    assert a == get_task(name).sample(6, 2, seed=7)
    assert task.sample(3, 2, seed=7) == a[:3]
    assert a != task.sample(6, 2, seed=8)
    assert len({p.id for p in a}) == 6
    assert all(p.task == name and p.difficulty == 2 for p in a)


@pytest.mark.parametrize("name", BUILT_IN)
def test_text_is_printable_ascii_so_the_char_tokenizer_has_no_unknowns(name):
    task = get_task(name)
    tok = CharTokenizer()
    for i, problem in enumerate(list(_cases(name))[:40]):
        flawed, _ = task.inject_flaw(problem, seed=i)
        for text in (problem.prompt, problem.solution, flawed):
            assert all(c == "\n" or " " <= c <= "~" for c in text), text
        prompt_ids, solution_ids = problem.tokens(tok)
        assert tok.decode(prompt_ids + solution_ids) == problem.prompt + problem.solution
        assert tok.unk_id not in prompt_ids + solution_ids


@pytest.mark.parametrize("name", ["arithmetic", "addition", "sorting"])
def test_difficulty_one_prompt_and_solution_fit_in_100_characters(name):
    task = get_task(name)
    for problem in task.sample(200, 1, seed=0):
        assert len(problem.prompt + problem.solution) < 100


@pytest.mark.parametrize("name", BUILT_IN)
def test_flaw_injection_is_deterministic_by_seed(name):
    task = get_task(name)
    problem = task.sample(1, 2, seed=0)[0]
    assert task.inject_flaw(problem, seed=3) == task.inject_flaw(problem, seed=3)
    for kind in task.flaw_types[:1]:
        _, record = task.inject_flaw(problem, seed=0, flaw_type=kind)
        assert record.flaw_type == kind
    with pytest.raises(ValueError, match="no flaw type"):
        task.inject_flaw(problem, flaw_type="not_a_flaw")


@pytest.mark.parametrize("name", BUILT_IN)
def test_bad_difficulty_is_an_error(name):
    task = get_task(name)
    with pytest.raises(ValueError, match="difficulty"):
        task.sample(1, 0, seed=0)


@pytest.mark.parametrize("name", BUILT_IN)
def test_labelled_responses_are_balanced_and_their_labels_agree_with_gold(name):
    task = get_task(name)
    problems = task.sample(10, 1, seed=0)
    labelled = task.labelled_responses(problems, seed=0)
    assert sum(r.flaw is not None for r in labelled) == 5
    for r in labelled:
        verdict = task.check(r.problem, r.response)
        assert verdict.correct == (r.flaw is None)
        if r.flaw is not None:
            assert verdict.first_error == r.flaw.location


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_IN)
def test_flaw_and_critique_contract_holds_over_a_large_sweep(name):
    """The contract of the fast tests, over every difficulty and thousands of seeds (minutes, not seconds)."""
    task = get_task(name)
    difficulties = range(1, 7) if name == "code" else range(1, 16)
    for d in difficulties:
        n = min(150, len(task.pool(d)) // 2) if name == "code" else 300
        for i, problem in enumerate(task.sample(n, d, seed=11)):
            assert task.check(problem, problem.solution).correct
            for seed in range(3):
                flawed, record = task.inject_flaw(problem, seed=1000 * i + seed)
                assert task.check(problem, flawed).first_error == record.location
                assert task.check_critique(problem, flawed, record.critique(), record).valid
