import itertools

from oversight.tasks import Problem, get_task


def _problem(n_vars, clauses, bits):
    return Problem(
        "sat", "p", 1, "sat: " + " ".join(clauses) + "\n", bits, {"n_vars": n_vars, "clauses": clauses}
    )


def test_planted_assignment_satisfies_every_clause_of_three_distinct_variables():
    task = get_task("sat")
    for p in task.sample(50, 3, seed=0):
        n = p.data["n_vars"]
        assert n == 6 and len(p.solution) == n
        assert len(p.data["clauses"]) == 18
        assert all(len({c.lower() for c in clause}) == 3 for clause in p.data["clauses"])
        assert task.check(p, p.solution).correct


def test_any_satisfying_assignment_is_correct_not_only_the_planted_one():
    task = get_task("sat")
    p = _problem(3, ["abc"], "111")
    satisfying = ["".join(bits) for bits in itertools.product("01", repeat=3) if "1" in bits]
    assert all(task.check(p, bits).correct for bits in satisfying)
    assert task.check(p, "000").first_error == 0


def test_gold_reports_the_first_unsatisfied_clause():
    task = get_task("sat")
    p = _problem(3, ["abc", "ABc", "aBC"], "101")
    assert task.check(p, "101").correct
    assert task.unit_checks(p, "110") == [True, False, True]
    assert task.unit_checks(p, "111") == [True, True, True]
    assert task.check(p, "011").first_error == 2
    assert task.check(p, "10").first_error == 0  # malformed: every clause fails
    assert task.check(p, "1x1").first_error == 0


def test_critique_points_at_an_unsatisfied_clause_and_names_a_variable_that_fixes_it():
    task = get_task("sat")
    p = _problem(3, ["abc", "ABc", "aBC"], "101")
    assert task.check_critique(p, "011", "clause 2: a=1").valid
    assert task.check_critique(p, "011", "clause 2: b=0").valid  # another literal of the clause
    assert not task.check_critique(p, "011", "clause 2: b=1").valid  # makes its literal false
    assert not task.check_critique(p, "011", "clause 2: d=1").valid  # not a variable of the clause
    assert not task.check_critique(p, "011", "clause 0: a=1").valid  # a satisfied clause


def test_flaw_record_restores_a_variable_of_the_recorded_clause():
    task = get_task("sat")
    for i, p in enumerate(task.sample(200, 4, seed=1)):
        flawed, record = task.inject_flaw(p, seed=i)
        var = record.correction[0]
        assert var in p.data["clauses"][record.location].lower()
        fixed = list(flawed)
        fixed["abcdefghijklmnopqrstuvwxyz".index(var)] = record.correction[-1]
        assert task.unit_checks(p, "".join(fixed))[record.location]
