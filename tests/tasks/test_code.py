import ast

import pytest

from oversight.tasks import Problem, get_task
from oversight.tasks.code import LENGTH_EDGES, apply_mutation, canonical_source, mutation_sites, stdlib_root

SOURCE = "def f(xs, lo):\n    n = len(xs)\n    if lo < n:\n        return max(xs[lo], n - 1)\n    return None"


def _problem(text=SOURCE):
    return Problem("code", "p", 1, "# m.f\n", text, {"module": "m", "qualname": "f"})


def test_at_least_1000_distinct_stdlib_functions_get_a_mutant_gold_confirms():
    task = get_task("code")
    originals, mutants = set(), set()
    for d, n in ((1, 400), (2, 400), (3, 300)):
        for i, p in enumerate(task.sample(n, d, seed=0)):
            flawed, record = task.inject_flaw(p, seed=i)
            verdict = task.check(p, flawed)
            assert verdict.first_error == record.location
            lines, ref = flawed.split("\n"), p.solution.split("\n")
            assert lines[record.location] == record.flawed and ref[record.location] == record.original
            assert task.check_critique(p, flawed, record.critique()).valid
            originals.add(p.solution)
            mutants.add(flawed)
    assert len(originals) >= 1000 and len(mutants) >= 1000


def test_functions_come_from_the_standard_library_source_on_this_machine():
    task = get_task("code")
    for p in task.sample(20, 2, seed=0):
        module = p.data["module"]
        path = stdlib_root().joinpath(*module.split("."))
        source = (
            path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        ).read_text()
        name = p.data["qualname"].split(".")[-1].split("#")[0]
        assert f"def {name}(" in source
        assert p.prompt == f"# {module}.{p.data['qualname']}\n"


def test_difficulty_is_function_length():
    task = get_task("code")
    for d in (1, 3, 5):
        for p in task.sample(20, d, seed=0):
            assert LENGTH_EDGES[d - 1] <= p.solution.count("\n") + 1 < LENGTH_EDGES[d]


def test_each_operator_makes_the_named_change_on_one_line():
    text = SOURCE
    sites = mutation_sites(text)
    made = {}
    for kind, places in sites.items():
        for site, variants in places:
            for v in range(variants):
                out = apply_mutation(text, kind, site, v)
                if out is not None:
                    made.setdefault(kind, []).append(out[1])
    assert set(made) == {
        "comparison_swap",
        "off_by_one",
        "negated_condition",
        "swapped_arguments",
        "wrong_variable",
    }
    assert {(r.original.strip(), r.flawed.strip()) for r in made["comparison_swap"]} == {
        ("if lo < n:", "if lo <= n:")
    }
    assert ("if lo < n:", "if not lo < n:") in {
        (r.original.strip(), r.flawed.strip()) for r in made["negated_condition"]
    }
    assert any(r.flawed.strip() == "return max(n - 1, xs[lo])" for r in made["swapped_arguments"])
    assert {r.flawed.strip() for r in made["off_by_one"]} == {
        "return max(xs[lo], n - 2)",
        "return max(xs[lo], n - 0)",
    }
    assert any(r.flawed.strip() == "n = len(lo)" for r in made["wrong_variable"])
    for records in made.values():
        for r in records:
            assert r.location == text.split("\n").index(r.original)


def test_mutants_that_leave_the_source_unchanged_are_skipped():
    text = "def f(x):\n    return g(x, x)"
    sites = mutation_sites(text)["swapped_arguments"]
    assert sites and all(
        apply_mutation(text, "swapped_arguments", s, v) is None for s, n in sites for v in range(n)
    )


def test_gold_ignores_formatting_and_comments_but_not_code():
    task = get_task("code")
    p = _problem()
    reformatted = (
        "def f(xs, lo):  # comment\n    n = len( xs )\n    if (lo < n):\n"
        "        return max(xs[lo], n-1)\n    return None\n"
    )
    assert task.check(p, reformatted).correct
    buggy = SOURCE.replace("lo < n", "lo <= n")
    assert task.check(p, buggy).first_error == 2
    assert task.check(p, "def f(:\n  garbage").correct is False
    assert task.check(p, SOURCE.replace("    n = len(xs)\n", "")).first_error == 1  # a missing line


def test_code_critique_correction_is_judged_by_syntax_tree():
    task = get_task("code")
    p = _problem()
    buggy = SOURCE.replace("lo < n", "lo <= n")
    assert task.check_critique(p, buggy, "line 2: if lo < n:").valid
    assert task.check_critique(p, buggy, "line 2: if (lo<n):").valid
    assert not task.check_critique(p, buggy, "line 2: if lo > n:").valid
    assert not task.check_critique(p, buggy, "line 3: return max(xs[lo], n - 1)").valid


def test_asking_for_more_functions_than_the_bucket_holds_is_an_error():
    task = get_task("code", modules=["bisect"])
    with pytest.raises(ValueError, match="only"):
        task.sample(1000, 1, seed=0)
    with pytest.raises(ValueError, match="no standard-library module"):
        get_task("code", modules=["not_a_module"]).sample(1, 1, 0)


def test_canonical_source_parses_and_has_no_docstring():
    task = get_task("code")
    for p in task.sample(50, 2, seed=1):
        func = ast.parse(p.solution).body[0]
        first = func.body[0]
        assert not (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        )


def test_own_code_is_injected_into_once_in_canonical_form():
    task = get_task("code")
    mine = 'def f(a,b):\n    """Doc."""\n    return a<b  # comment'
    with pytest.raises(ValueError, match="canonical_source"):
        task.inject_flaw(_problem(mine), flaw_type="comparison_swap")
    p = _problem(canonical_source(mine))
    assert p.solution == "def f(a, b):\n    return a < b"
    flawed, record = task.inject_flaw(p, flaw_type="comparison_swap")
    assert flawed == "def f(a, b):\n    return a <= b" and record.location == 1
