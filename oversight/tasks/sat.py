"""3-SAT (Saunders et al. 2022 synthetic task): find an assignment satisfying every clause.

    prompt:   "sat: aBc bcD Acd ...\\n"     (variables a, b, c, ...; upper case = negated literal)
    solution: "1011"                       (value of a, b, c, d in order)

Variables are letters so a clause is three characters: compact for character-level models and still readable.
Units are the clauses: a clause passes its local check when the assignment satisfies it. The flaw is a claimed
assignment that leaves a clause unsatisfied; the critique "clause <i>: b=1" points at an unsatisfied clause
and names a variable of it whose new value satisfies it. Any satisfying assignment is correct, not only the
planted one. Difficulty d: `min_vars + d - 1` variables (at most 26) and `round(clause_ratio * variables)`
clauses, all satisfied by a planted random assignment.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any

from oversight.tasks.base import Analysis, FlawRecord, Problem, Task, register_task

_LETTERS = string.ascii_lowercase
_CORRECTION = re.compile(r"^\s*([a-z])\s*=\s*([01])\s*$")


def _literal_true(literal: str, bits: str) -> bool:
    value = bits[_LETTERS.index(literal.lower())] == "1"
    return value if literal.islower() else not value


@register_task("sat")
class SatTask(Task):
    """Planted 3-SAT; flaw: an assignment leaving a clause unsatisfied."""

    unit = "clause"
    flaw_types = ("unsatisfied_clause",)

    def __init__(self, min_vars: int = 4, clause_ratio: float = 3.0) -> None:
        if not 3 <= min_vars <= 26:
            raise ValueError(f"min_vars must be in 3..26, got {min_vars}")
        if clause_ratio <= 0:
            raise ValueError(f"clause_ratio must be > 0, got {clause_ratio}")
        # number of variables at difficulty 1 (one more per level, at most 26)
        self.min_vars = min_vars
        # clauses per variable (4.26 is the hard random-3-SAT threshold; planted instances stay satisfiable)
        self.clause_ratio = clause_ratio

    @property
    def max_difficulty(self) -> int:  # type: ignore[override]
        return 26 - self.min_vars + 1

    def options(self) -> dict[str, Any]:
        return {"min_vars": self.min_vars, "clause_ratio": self.clause_ratio}

    def _generate(self, rng: random.Random, difficulty: int) -> tuple[str, str, dict[str, Any]]:
        n = self.min_vars + difficulty - 1
        bits = "".join(rng.choice("01") for _ in range(n))
        clauses: list[str] = []
        while len(clauses) < max(1, round(self.clause_ratio * n)):
            names = rng.sample(_LETTERS[:n], 3)
            clause = "".join(v if rng.random() < 0.5 else v.upper() for v in names)
            if any(_literal_true(lit, bits) for lit in clause):  # keep the planted assignment a solution
                clauses.append(clause)
        return "sat: " + " ".join(clauses) + "\n", bits, {"n_vars": n, "clauses": clauses}

    def _validate_data(self, problem: Problem) -> None:
        n, clauses = problem.data.get("n_vars"), problem.data.get("clauses")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 26:
            raise ValueError("'n_vars' must be an int in 1..26")
        if not isinstance(clauses, list) or not clauses:
            raise ValueError("'clauses' must be a non-empty list of strings of literals")
        for clause in clauses:
            if (
                not isinstance(clause, str)
                or not clause
                or any(c.lower() not in _LETTERS[:n] for c in clause)
            ):
                raise ValueError(
                    f"bad clause {clause!r}: literals are letters among the first {n} (upper = negated)"
                )

    def _clauses(self, problem: Problem) -> list[str]:
        return list(problem.data["clauses"])

    def analyse(self, problem: Problem, candidate: str) -> Analysis:
        n, clauses = problem.data["n_vars"], self._clauses(problem)
        bits = candidate.strip()
        if len(bits) != n or set(bits) - {"0", "1"}:
            why = f"the assignment must be {n} characters of 0/1"
            return Analysis([False] * len(clauses), [None] * len(clauses), [why] * len(clauses))
        ok, expected, reasons = [], [], []
        for clause in clauses:
            satisfied = any(_literal_true(lit, bits) for lit in clause)
            # the canonical correction: flip the clause's first variable
            var = clause[0].lower()
            ok.append(satisfied)
            expected.append(f"{var}={'1' if clause[0].islower() else '0'}")
            reasons.append("" if satisfied else f"clause {clause} is unsatisfied")
        return Analysis(ok, expected, reasons)

    def correction_right(self, problem: Problem, candidate: str, location: int, correction: str) -> bool:
        """Right when it sets a variable of the clause to the value that makes its literal true."""
        m = _CORRECTION.match(correction)
        clauses = self._clauses(problem)
        if not m or not 0 <= location < len(clauses):
            return False
        var, value = m.group(1), m.group(2)
        for lit in clauses[location]:
            if lit.lower() == var:
                return (value == "1") == lit.islower()
        return False

    def _inject(self, problem: Problem, rng: random.Random, flaw_type: str) -> tuple[str, FlawRecord]:
        if flaw_type != "unsatisfied_clause":
            raise ValueError(f"unknown flaw type {flaw_type!r}")
        clauses, bits = self._clauses(problem), problem.solution.strip()
        # falsify one clause by flipping every variable that currently satisfies it
        target = clauses[rng.randrange(len(clauses))]
        flip = {lit.lower() for lit in target if _literal_true(lit, bits)}
        flawed = "".join(("1" if b == "0" else "0") if _LETTERS[i] in flip else b for i, b in enumerate(bits))
        first = next(i for i, c in enumerate(clauses) if not any(_literal_true(lit, flawed) for lit in c))
        # the correction restores a flipped variable that made the first unsatisfied clause true
        var = next(lit.lower() for lit in clauses[first] if _literal_true(lit, bits))
        i = _LETTERS.index(var)
        record = FlawRecord(flaw_type, first, f"{var}={bits[i]}", f"{var}={flawed[i]}", f"{var}={bits[i]}")
        return flawed, record
