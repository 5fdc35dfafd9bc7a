import pytest

from oversight.tasks import Critique, Problem, get_task


def _problem(start, ops):
    task = get_task("arithmetic")
    solution = task._render(start, [list(o) for o in ops])
    prompt = "chain: " + " ".join([str(start)] + [f"{o}{b}" for o, b in ops]) + "\n"
    return task, Problem(
        "arithmetic", "p", 1, prompt, solution, {"start": start, "ops": [list(o) for o in ops]}
    )


def test_problem_renders_worked_steps_and_answer():
    task, p = _problem(7, [("+", 5), ("*", 3), ("-", 2)])
    assert p.solution == "7+5=12\n12*3=36\n36-2=34\nanswer 34"
    assert task.check(p, p.solution).correct
    assert len(task.unit_checks(p, p.solution)) == 4  # three steps and the answer


def test_difficulty_adds_steps_and_operand_digits():
    task = get_task("arithmetic")
    easy, hard = task.sample(50, 1, seed=0), task.sample(50, 7, seed=0)
    assert all(len(p.data["ops"]) == 2 for p in easy)
    assert all(len(p.data["ops"]) == 8 for p in hard)
    assert max(b for p in easy for op, b in p.data["ops"]) <= 9
    assert max(b for p in hard for op, b in p.data["ops"] if op != "*") >= 100


def test_gold_ignores_whitespace_but_not_content():
    task, p = _problem(7, [("+", 5), ("*", 3)])
    assert task.check(p, "  7 + 5 = 12\n\n12*3 = 36\nanswer  36\n").correct
    verdict = task.check(p, "7+5=12\n12*3=35\nanswer 35")
    assert verdict.first_error == 1 and "36" in verdict.reason


def test_wrong_result_flaw_keeps_later_steps_consistent_so_only_one_step_fails():
    task = get_task("arithmetic")
    for i, p in enumerate(task.sample(100, 5, seed=1)):
        flawed, record = task.inject_flaw(p, seed=i, flaw_type="wrong_result")
        ok = task.unit_checks(p, flawed)
        assert ok.count(False) == 1 and not ok[record.location]
        assert len(ok) == len(task.unit_checks(p, p.solution))
        assert flawed.split("\n")[-1] != p.solution.split("\n")[-1]  # the final answer is wrong too


def test_wrong_operation_flaw_applies_another_operation_to_the_same_operand():
    task = get_task("arithmetic")
    for i, p in enumerate(task.sample(100, 4, seed=2)):
        flawed, record = task.inject_flaw(p, seed=i, flaw_type="wrong_operation")
        op, b = p.data["ops"][record.location]
        assert f"{op}{b}=" in record.original and f"{op}{b}=" not in record.flawed
        assert record.flawed.split("=")[0].endswith(str(b))
        assert task.unit_checks(p, flawed).count(False) == 1


def test_skipped_step_flaw_drops_one_step_and_gold_points_at_the_gap():
    task, p = _problem(7, [("+", 5), ("*", 3), ("-", 2)])
    flawed = "7+5=12\n12-2=10\nanswer 10"
    verdict = task.check(p, flawed)
    assert verdict.first_error == 1 and "skips *3" in verdict.reason
    assert task.unit_checks(p, flawed) == [True, False, True]
    assert task.correction(p, flawed, 1) == "12*3=36"
    for i, q in enumerate(task.sample(100, 3, seed=3)):
        text, record = task.inject_flaw(q, seed=i, flaw_type="skipped_step")
        assert text.count("\n") == q.solution.count("\n") - 1
        assert task.unit_checks(q, text).count(False) == 1


def test_skipping_the_last_step_is_found_at_the_answer_line():
    task, p = _problem(7, [("+", 5), ("*", 3)])
    verdict = task.check(p, "7+5=12\nanswer 12")
    assert verdict.first_error == 1 and "*3" in verdict.reason
    assert task.check_critique(p, "7+5=12\nanswer 12", "step 1: 12*3=36").valid


def test_critique_correction_is_checked_exactly():
    task, p = _problem(7, [("+", 5), ("*", 3)])
    flawed = "7+5=13\n13*3=39\nanswer 39"
    assert task.check_critique(p, flawed, "step 0: 7+5=12").valid
    assert task.check_critique(p, flawed, "step 0: 7 + 5 = 12").valid
    assert not task.check_critique(p, flawed, "step 0: 7+5=11").valid
    assert not task.check_critique(p, flawed, "step 1: 13*3=39").valid  # consistent with the step before it
    assert not task.check_critique(p, flawed, Critique(0, None)).valid


def test_missing_answer_and_extra_lines_are_errors_at_their_place():
    task, p = _problem(7, [("+", 5), ("*", 3)])
    assert task.check(p, "7+5=12\n12*3=36").first_error == 2
    assert task.check(p, "7+5=12\n12*3=36\nanswer 36\nmore").first_error == 3
    assert task.check(p, "7+5=12\nhello\n12*3=36\nanswer 36").first_error == 1


def test_bad_options_are_rejected():
    with pytest.raises(ValueError):
        get_task("arithmetic", ops="/")
    with pytest.raises(ValueError):
        get_task("arithmetic", base_steps=0)
    task = get_task("arithmetic", ops="+", base_steps=3)
    assert all(
        op == "+" and len(p.data["ops"]) == 3 for p in task.sample(10, 1, 0) for op, _ in p.data["ops"]
    )


def test_unit_views_show_each_line_with_only_the_context_its_check_needs():
    task, p = _problem(7, [("+", 5), ("-", 3)])
    assert task.unit_views(p, p.solution) == [
        "chain: 7 +5\n7+5=12",
        "chain: 12 -3\n12-3=9",
        "chain: 9\nanswer 9",
    ]
    # a wrong result is carried into the next view (the next step is checked against what was claimed)
    assert task.unit_views(p, "7+5=13\n13-3=10\nanswer 10")[1] == "chain: 13 -3\n13-3=10"
    # a skipped step: the line is seen against the operation it should have applied; a missing answer is a unit
    views = task.unit_views(p, "7-3=4")
    assert views == ["chain: 7 +5\n7-3=4", "chain: 4\n"]
    assert len(views) == len(task.unit_checks(p, "7-3=4"))
    # lines after the answer
    assert task.unit_views(p, p.solution + "\n1+1=2")[-1] == "chain: end\n1+1=2"


def test_a_units_gold_check_is_a_function_of_its_view():
    """What a step verifier can learn: two units with the same view always get the same gold verdict."""
    import random

    task = get_task("arithmetic", ops="+-")
    verdicts: dict[str, bool] = {}
    rng = random.Random(0)
    for p in task.sample(60, 3, seed=0):
        candidates = [p.solution]
        for s in range(3):
            candidates.append(task.inject_flaw(p, seed=s)[0])
        lines = p.solution.split("\n")
        candidates.append("\n".join(lines[: rng.randrange(len(lines))]))  # truncated
        candidates.append(p.solution.replace("=", "=1", 1))  # garbled digit
        for c in candidates:
            views, ok = task.unit_views(p, c), task.unit_checks(p, c)
            assert len(views) == len(ok)
            for v, good in zip(views, ok, strict=True):
                assert verdicts.setdefault(v, good) == good, v


def test_tasks_without_views_say_so():
    task = get_task("sorting")
    p = task.sample(1, 1, seed=0)[0]
    with pytest.raises(ValueError, match="sorting.*local views"):
        task.unit_views(p, p.solution)
