from oversight.tasks import Problem, get_task


def _problem(a, b):
    return Problem("addition", "p", 1, f"{a}+{b}=", str(a + b), {"a": a, "b": b})


def test_prompt_is_the_sum_and_solution_its_value():
    task = get_task("addition")
    p = task.sample(1, 1, seed=0)[0]
    a, b = p.data["a"], p.data["b"]
    assert p.prompt == f"{a}+{b}=" and p.solution == str(a + b)


def test_difficulty_sets_operand_digits():
    task = get_task("addition")
    for d in (1, 4, 9):
        for p in task.sample(30, d, seed=0):
            assert len(str(p.data["a"])) == len(str(p.data["b"])) == d + 1


def test_wrong_digit_flaw_changes_exactly_one_digit_and_no_leading_zero():
    task = get_task("addition")
    for i, p in enumerate(task.sample(300, 3, seed=1)):
        flawed, record = task.inject_flaw(p, seed=i)
        diffs = [k for k, (x, y) in enumerate(zip(flawed, p.solution, strict=True)) if x != y]
        assert diffs == [record.location]
        assert not flawed.startswith("0")


def test_gold_points_at_the_first_wrong_digit():
    task = get_task("addition")
    p = _problem(57, 68)
    assert task.check(p, "125").correct
    assert task.check(p, " 125\n").correct
    assert task.check(p, "135").first_error == 1
    assert task.check(p, "12").first_error == 2  # missing digit
    assert task.check(p, "1250").first_error == 3  # extra digit
    assert task.check(p, "x").first_error == 0


def test_critique_names_the_digit_and_the_right_value():
    task = get_task("addition")
    p = _problem(57, 68)
    assert task.check_critique(p, "135", "digit 1: 2").valid
    assert not task.check_critique(p, "135", "digit 1: 4").valid
    assert not task.check_critique(p, "135", "digit 2: 5").valid
    assert not task.check_critique(p, "135", "line 1: 2").valid  # wrong unit name: not this task's critique
