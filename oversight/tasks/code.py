"""Code with injected bugs: real functions from this machine's Python standard library, mutated.

Each problem is one function (or method) read from the standard library's own source with `ast`, docstring
removed and rendered by `ast.unparse`. That canonical form puts every statement (and every compound-statement
header) on its own line, so an expression-level mutation changes exactly one line and the record can name it.

    prompt:   "# bisect.insort_right\\n"
    solution: "def insort_right(a, x, lo=0, hi=None, *, key=None):\\n    if key is None: ..."

Mutation operators (the flaw types), each applied to one AST node:
- comparison_swap: `<` <-> `<=`, `>` <-> `>=`, `==` <-> `!=`, `is` <-> `is not`, `in` <-> `not in`;
- off_by_one: an integer constant n becomes n + 1 or n - 1;
- negated_condition: the test of an if / while / conditional expression / assert is negated;
- swapped_arguments: two adjacent positional arguments of a call change places;
- wrong_variable: a local name is read where another local name was.
A mutant whose text or syntax tree is unchanged, or that changes more than one line, is skipped.

Units are lines. Gold: a candidate is correct when its syntax tree equals the reference's (formatting and
comments do not matter); otherwise the lines that differ from the aligned reference lines fail. A critique
"line <i>: <text>" is right when line i differs and putting <text> in its place restores the reference.
(As in all mutation testing, a rare mutant is semantically equivalent to the original; gold here means "is
the reference function", which is what the injected-flaw record states.)

Difficulty = function length in lines: 1: 2-5, 2: 6-10, 3: 11-20, 4: 21-40, 5: 41-80, 6: 81 or more.
"""

from __future__ import annotations

import ast
import difflib
import functools
import itertools
import os
import random
import sysconfig
import warnings
from pathlib import Path
from typing import Any

from oversight.tasks.base import Analysis, FlawRecord, Problem, Task, register_task

# lower bound of each difficulty's function length in lines (difficulty d spans [EDGES[d-1], EDGES[d]))
LENGTH_EDGES = (2, 6, 11, 21, 41, 81, 10**9)

# Pure-Python standard-library modules used by default: algorithmic code with plenty of comparisons,
# indices and calls (thousands of functions), and quick to parse. `modules="all"` walks the whole library.
DEFAULT_MODULES = tuple(
    """
    _pydecimal argparse ast base64 bisect calendar cmd code codeop collections colorsys configparser
    contextlib copy csv dataclasses datetime difflib dis email._header_value_parser email.message
    email.utils enum filecmp fnmatch fractions functools getopt gettext glob gzip heapq hmac html
    html.parser http.client http.cookiejar http.cookies inspect ipaddress json.decoder json.encoder locale
    logging mimetypes ntpath numbers operator optparse pathlib pickle pickletools platform plistlib
    posixpath pprint pstats quopri random re._compiler re._parser reprlib sched secrets selectors shlex
    shutil socket statistics string subprocess tempfile textwrap threading timeit tokenize trace traceback
    typing unittest.case urllib.parse uuid wave weakref xml.dom.minidom zipfile
    """.split()
)

# folders of the standard library never read: tests, GUI code, data, vendored packages
_SKIP_DIRS = set(
    """
    test tests idle_test idlelib tkinter turtledemo lib2to3 ensurepip
    site-packages dist-packages __pycache__ pydoc_data encodings distutils __phello__
    """.split()
)

_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
# names never used as the wrong variable: swapping `self` in makes the bug glaring, not subtle
_PROTECTED = {"self", "cls"}


# ----------------------------------------------------------------------------------------------------------
# Reading functions from the standard library


def stdlib_root() -> Path:
    """Folder holding this interpreter's standard-library source."""
    return Path(sysconfig.get_paths()["stdlib"])


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _all_modules(root: Path) -> list[str]:
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", ".")) and "-" not in d
        )
        rel = Path(folder).relative_to(root).parts
        for f in sorted(files):
            if f.endswith(".py") and not f.startswith("test"):
                stem = f[:-3]
                parts = rel if stem == "__init__" else (*rel, stem)
                if parts and all(p.isidentifier() for p in parts):
                    names.append(".".join(parts))
    return names


def _strip_docstring(node: ast.AST) -> None:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]


def _printable(text: str) -> bool:
    return all(c == "\n" or " " <= c <= "~" for c in text)


def _canonical(node: ast.AST) -> str | None:
    """The function as `ast.unparse` writes it, docstrings removed; None if that form is unusable here."""
    for sub in ast.walk(node):
        if isinstance(sub, (*_FUNCS, ast.ClassDef)):
            _strip_docstring(sub)
    try:
        text = ast.unparse(node)
    except (ValueError, RecursionError):
        return None
    return text if _printable(text) else None


def canonical_source(text: str) -> str:
    """`text` as the code task renders functions (`ast.unparse`, no docstrings), for bringing your own code:
    mutations are injected into this form, where each statement has its own line."""
    module = ast.parse(text)
    for sub in ast.walk(module):
        if isinstance(sub, (*_FUNCS, ast.ClassDef)):
            _strip_docstring(sub)
    return ast.unparse(module)


def _functions_of(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    out = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, _FUNCS):
                out.append((prefix + node.name, node))
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")

    visit(tree.body, "")
    return out


@functools.lru_cache(maxsize=8)
def function_pool(modules: tuple[str, ...] | str = "default") -> tuple[tuple[str, str, str], ...]:
    """Every usable function of the chosen modules as (module, qualname, canonical source), sorted, unique.

    Usable = renders to printable ASCII and is at least two lines long (whether it has a usable mutant is
    settled when it is sampled). Cached per process: reading the default modules takes a few seconds.
    """
    root = stdlib_root()
    names = (
        _all_modules(root) if modules == "all" else list(DEFAULT_MODULES if modules == "default" else modules)
    )
    seen, pool = set(), []
    for name in names:
        path = _module_file(root, name)
        if path is None:
            if modules not in ("all", "default"):
                raise ValueError(f"no standard-library module {name!r} under {root}")
            continue  # a default module missing from this Python version
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        counts: dict[str, int] = {}
        for qualname, node in _functions_of(tree):
            counts[qualname] = counts.get(qualname, 0) + 1
            label = qualname if counts[qualname] == 1 else f"{qualname}#{counts[qualname]}"
            text = _canonical(node)
            if text is None or text in seen or text.count("\n") < 1:
                continue
            seen.add(text)
            pool.append((name, label, text))
    pool.sort()
    return tuple(pool)


# ----------------------------------------------------------------------------------------------------------
# Mutation operators


def _local_names(func: ast.AST) -> set[str]:
    args = func.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names - _PROTECTED


def mutation_sites(text: str) -> dict[str, list[tuple[int, int]]]:
    """Per flaw type, the (node index in `ast.walk` order, number of variants) places it can apply to."""
    func = ast.parse(text).body[0]
    local = sorted(_local_names(func))
    sites: dict[str, list[tuple[int, int]]] = {
        "comparison_swap": [],
        "off_by_one": [],
        "negated_condition": [],
        "swapped_arguments": [],
        "wrong_variable": [],
    }
    for i, node in enumerate(ast.walk(func)):
        if isinstance(node, ast.Compare) and any(type(op) in _SWAP for op in node.ops):
            sites["comparison_swap"].append((i, len(node.ops)))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites["off_by_one"].append((i, 2))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            sites["negated_condition"].append((i, 1))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            sites["swapped_arguments"].append((i, len(node.args) - 1))
        elif (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id in local
            and len(local) > 1
        ):
            sites["wrong_variable"].append((i, len(local) - 1))
    return sites


def _mutate(node: ast.AST, flaw_type: str, variant: int, local: list[str]) -> bool:
    """Apply one operator to `node` in place; False if this variant does not apply."""
    if flaw_type == "comparison_swap":
        op = node.ops[variant]
        if type(op) not in _SWAP:
            return False
        node.ops[variant] = _SWAP[type(op)]()
    elif flaw_type == "off_by_one":
        node.value = node.value + (1 if variant == 0 else -1)
    elif flaw_type == "negated_condition":
        test = node.test
        negated = test.operand if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) else None
        node.test = negated if negated is not None else ast.UnaryOp(ast.Not(), test)
    elif flaw_type == "swapped_arguments":
        a, b = node.args[variant], node.args[variant + 1]
        if isinstance(a, ast.Starred) or isinstance(b, ast.Starred) or ast.dump(a) == ast.dump(b):
            return False
        node.args[variant], node.args[variant + 1] = b, a
    elif flaw_type == "wrong_variable":
        others = [n for n in local if n != node.id]
        node.id = others[variant]
    else:
        raise ValueError(f"unknown flaw type {flaw_type!r}")
    return True


def apply_mutation(text: str, flaw_type: str, site: int, variant: int) -> tuple[str, FlawRecord] | None:
    """The function `text` with one mutation, and its record; None if the mutant is unusable.

    Unusable: the operator does not apply, the mutant does not parse, its syntax tree or text is unchanged,
    or it differs from the original in anything but exactly one line.
    """
    module = ast.parse(text)
    func = module.body[0]
    local = sorted(_local_names(func))
    nodes = list(ast.walk(func))
    if not 0 <= site < len(nodes) or not _mutate(nodes[site], flaw_type, variant, local):
        return None
    try:
        mutant = ast.unparse(module)
        same_tree = ast.dump(ast.parse(mutant)) == _dump(text)
    except (SyntaxError, ValueError, RecursionError):
        return None
    old, new = text.split("\n"), mutant.split("\n")
    if same_tree or len(old) != len(new):
        return None
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    if len(changed) != 1:
        return None
    k = changed[0]
    return mutant, FlawRecord(flaw_type, k, old[k], new[k], old[k].strip())


@functools.lru_cache(maxsize=65536)
def has_mutant(text: str, attempts: int = 32) -> bool:
    """Does `text` give a usable mutant within the first `attempts` tries? (Settles whether to sample it.)"""
    try:
        if ast.unparse(ast.parse(text)) != text:  # not a fixed point of unparse: no mutant would be one line
            return False
    except (SyntaxError, ValueError, RecursionError):
        return False
    per_kind = [
        [(kind, site, v) for site, n in places for v in range(n)]
        for kind, places in mutation_sites(text).items()
    ]
    # round-robin over the operators, so one with many unusable sites does not use up every attempt
    tries = [t for batch in itertools.zip_longest(*per_kind) for t in batch if t is not None]
    return any(apply_mutation(text, *t) is not None for t in tries[:attempts])


@functools.lru_cache(maxsize=4096)
def _dump(text: str) -> str | None:
    try:
        with warnings.catch_warnings():  # candidates are arbitrary text: no SyntaxWarning noise
            warnings.simplefilter("ignore")
            return ast.dump(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.rstrip().split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    return lines


# ----------------------------------------------------------------------------------------------------------
# The task


@register_task("code")
class CodeTask(Task):
    """Standard-library functions with one injected bug; units are lines."""

    unit = "line"
    flaw_types = ("comparison_swap", "off_by_one", "negated_condition", "swapped_arguments", "wrong_variable")
    max_difficulty = len(LENGTH_EDGES) - 1

    def __init__(self, modules: str | list[str] | tuple[str, ...] = "default") -> None:
        if not isinstance(modules, str):
            modules = tuple(modules)
            if not modules:
                raise ValueError("modules must name at least one module")
        elif modules not in ("default", "all"):
            modules = (modules,)
        # which standard-library modules to read: "default", "all", or module names
        self.modules = modules

    def options(self) -> dict[str, Any]:
        return {"modules": self.modules if isinstance(self.modules, str) else list(self.modules)}

    def pool(self, difficulty: int | None = None) -> list[tuple[str, str, str]]:
        """(module, qualname, source) of every usable function, or only those at `difficulty`."""
        pool = function_pool(self.modules)
        if difficulty is None:
            return list(pool)
        if not 1 <= difficulty <= self.max_difficulty:
            raise ValueError(f"task 'code': difficulty must be in 1..{self.max_difficulty}, got {difficulty}")
        low, high = LENGTH_EDGES[difficulty - 1], LENGTH_EDGES[difficulty]
        return [f for f in pool if low <= f[2].count("\n") + 1 < high]

    def sample(self, n: int, difficulty: int, seed: int) -> list[Problem]:
        """`n` distinct functions at `difficulty` (a seeded permutation of that length bucket, so a prefix
        of a bigger sample); more than the bucket holds is an error, not a silent repeat."""
        self._check_sample_args(n, difficulty)
        bucket = self.pool(difficulty)
        if n > len(bucket):
            raise ValueError(
                f"task 'code': only {len(bucket)} functions at difficulty {difficulty} "
                f"in modules={self.modules!r}; "
                f"asked for {n} (modules='all' reads the whole standard library)"
            )
        order = random.Random(f"code/{difficulty}/{seed}").sample(range(len(bucket)), len(bucket))
        problems: list[Problem] = []
        for j in order:
            if len(problems) == n:
                break
            module, qualname, text = bucket[j]
            if not has_mutant(text):
                continue
            problems.append(
                Problem(
                    "code",
                    f"code-d{difficulty}-s{seed}-{len(problems)}",
                    difficulty,
                    f"# {module}.{qualname}\n",
                    text,
                    {"module": module, "qualname": qualname},
                )
            )
        if len(problems) < n:
            raise ValueError(
                f"task 'code': only {len(problems)} mutable functions at difficulty {difficulty}"
            )
        return problems

    def _validate_data(self, problem: Problem) -> None:
        if _dump(problem.solution) is None:
            raise ValueError("the solution is not valid Python")
        for key in ("module", "qualname"):
            if key in problem.data and not isinstance(problem.data[key], str):
                raise ValueError(f"{key!r} must be a string")

    def analyse(self, problem: Problem, candidate: str) -> Analysis:
        ref = _lines(problem.solution)
        cand = _lines(candidate)
        if _dump(candidate) is not None and _dump(candidate) == _dump(problem.solution):
            return Analysis([True] * max(1, len(cand)), [*cand] or [""], [""] * max(1, len(cand)))
        ok: list[bool] = [True] * len(cand)
        expected: list[str | None] = [None] * len(cand)
        reasons = [""] * len(cand)
        if not cand:  # empty candidate: one missing unit
            return Analysis([False], [ref[0].strip() if ref else None], ["empty"])
        matcher = difflib.SequenceMatcher(None, ref, cand, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for j in range(j1, j2):
                    expected[j] = ref[i1 + j - j1].strip()
            elif tag in ("replace", "insert"):
                for j in range(j1, j2):
                    i = i1 + j - j1
                    ok[j], reasons[j] = False, "differs from the reference" if i < i2 else "extra line"
                    expected[j] = ref[i].strip() if i < i2 else None
            else:  # delete: reference lines missing before candidate line j1
                j = min(j1, len(cand) - 1) if j1 < len(cand) else None
                if j is None:
                    ok.append(False)
                    expected.append(ref[i1].strip())
                    reasons.append("missing line(s) at the end")
                else:
                    ok[j], reasons[j] = False, "missing line(s) before this one"
                    expected[j] = ref[i1].strip()
        # trees differ but no line does (e.g. whitespace inside a string): blame the first raw difference
        if all(ok):
            raw_ref, raw_cand = problem.solution.split("\n"), candidate.split("\n")
            first = next((j for j, (a, b) in enumerate(zip(raw_ref, raw_cand, strict=False)) if a != b), 0)
            first = min(first, len(cand) - 1)
            ok[first], reasons[first] = False, "differs from the reference"
        return Analysis(ok, expected, reasons)

    def correction_right(self, problem: Problem, candidate: str, location: int, correction: str) -> bool:
        """Right when the correction, put in place of the aligned reference line, restores the reference tree
        (so `x<y` and `x < y` are the same correction), or when it repairs the candidate outright."""
        cand = _lines(candidate)
        if not 0 <= location < len(cand) or "\n" in correction:
            return False
        ref = _lines(problem.solution)
        target = _dump(problem.solution)
        indent = cand[location][: len(cand[location]) - len(cand[location].lstrip())]
        repaired = cand[:location] + [indent + correction.strip()] + cand[location + 1 :]
        if _dump("\n".join(repaired)) == target:
            return True
        expected = self.correction(problem, candidate, location)
        if expected is None:
            return False
        # any reference line holding the expected text will do: swapping a line for itself changes nothing
        i = next((i for i, line in enumerate(ref) if line.strip() == expected), None)
        if i is None:
            return False
        indent = ref[i][: len(ref[i]) - len(ref[i].lstrip())]
        return _dump("\n".join(ref[:i] + [indent + correction.strip()] + ref[i + 1 :])) == target

    def _inject(self, problem: Problem, rng: random.Random, flaw_type: str) -> tuple[str, FlawRecord]:
        text = "\n".join(_lines(problem.solution))
        if canonical_source(text) != text:
            raise ValueError(
                "the solution is not in canonical form: pass it through canonical_source() first"
            )
        sites = mutation_sites(text)[flaw_type]
        # try sites in random order until one gives a usable mutant
        for site, n_variants in rng.sample(sites, len(sites)):
            for variant in rng.sample(range(n_variants), n_variants):
                made = apply_mutation(text, flaw_type, site, variant)
                if made is not None:
                    return made
        raise ValueError(f"no usable {flaw_type} mutant")
