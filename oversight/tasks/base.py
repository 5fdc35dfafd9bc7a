"""The task interface: problems with ground truth, a gold checker, flaw injectors, a gold critique checker.

Every oversight measurement in this project is scored against a task's own gold checker, never against
another model's opinion, so each task provides four things:

- `sample(n, difficulty, seed)`: problems at a chosen difficulty, deterministic in its arguments;
- `check(problem, candidate)`: gold. Is the candidate right, and at which *unit* (step, digit, list
  position, clause, line) does it first go wrong?
- `inject_flaw(problem, seed)`: the reference solution with one flaw, plus a `FlawRecord` saying what was
  injected, where, and what the unit should say instead;
- `check_critique(problem, candidate, critique)`: gold for critiques in the "pointer + correction" form of
  Saunders et al. (2022): does the critique point at a unit that really is wrong, and is its correction right?

A candidate is judged unit by unit (`unit_checks`): each unit passes or fails a *local* check (a step's
arithmetic given the step before it, a digit against the true sum, a clause against the assignment, a line
against the aligned reference line). Local checks are what a capacity-limited overseer can afford one at a
time, which is why `oversight.overseers.SimulatedHuman` is built on them. A candidate is correct exactly when
every unit passes.

Units and pointers are 0-based everywhere, in critique text too ("step 0: 7+5=12").

Problems export to and load from `datasets.Dataset` and local JSONL/Parquet files in one flat schema
(`task, id, difficulty, prompt, solution, data`, with `data` a JSON string), so a split can be frozen, shared,
or written by hand; a malformed row is reported with its file and 1-based line (row, for Parquet).
"""

from __future__ import annotations

import json
import numbers
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from oversight.errors import UserError, require

# ----------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Problem:
    """One problem with its ground truth; everything the gold checker needs travels inside it."""

    # registry name of the task that made it (what `get_task` takes)
    task: str
    # identifier, unique within a sampled split: "<task>-d<difficulty>-s<seed>-<index>"
    id: str
    # the difficulty knob it was sampled at (1 = easiest)
    difficulty: int
    # what the model is conditioned on; the solution follows it directly
    prompt: str
    # the reference solution (worked steps where the task has them)
    solution: str
    # task-specific ground truth read by the gold checker; JSON-serialisable (lists, not tuples)
    data: dict[str, Any] = field(default_factory=dict)

    def tokens(self, tokenizer) -> tuple[list[int], list[int]]:
        """`(prompt_ids, solution_ids)` via any object with `encode(text) -> list[int]`; no specials added."""
        return list(tokenizer.encode(self.prompt)), list(tokenizer.encode(self.solution))


@dataclass(frozen=True)
class FlawRecord:
    """What a flaw injector did, so that every later judgement can be scored against the truth."""

    # which injector made the flaw, one of the task's `flaw_types` (e.g. "wrong_result")
    flaw_type: str
    # unit index where the flawed solution first goes wrong (what gold's `first_error` reports)
    location: int
    # what the reference solution had at that unit ("" where the flaw removed nothing)
    original: str
    # what the flawed solution has at that unit
    flawed: str
    # what a correct critique should say the unit must be instead
    correction: str

    def critique(self) -> Critique:
        """The true critique of this flaw: a pointer to its location plus the correction."""
        return Critique(self.location, self.correction)


@dataclass(frozen=True)
class Verdict:
    """Gold's judgement of one candidate solution."""

    # the candidate is right (every unit passes its local check)
    correct: bool
    # index of the first unit that fails; None when correct
    first_error: int | None
    # a short human-readable reason for the first failure ("" when correct)
    reason: str = ""


@dataclass(frozen=True)
class Critique:
    """A critique in pointer + correction form. `location=None` is the critique "no flaw"."""

    # unit index the critique points at; None claims the candidate has no flaw
    location: int | None
    # what the pointed unit should be instead (task-specific text: a step, a digit, a word, "b=1", a line)
    correction: str | None = None


@dataclass(frozen=True)
class CritiqueVerdict:
    """Gold's judgement of one critique of one candidate."""

    # the critique is right: on a flawed candidate it names a real flaw with a right correction,
    # on a correct candidate it claims no flaw
    valid: bool
    # the critique claims a flaw (it has a location)
    claims_flaw: bool
    # the unit it points at really fails gold's local check
    real_flaw: bool
    # its correction is what the pointed unit should be
    correction_right: bool
    # it points at the recorded injected flaw; None when no record was given
    names_injected: bool | None
    # a short human-readable reason
    reason: str = ""


@dataclass(frozen=True)
class Analysis:
    """Unit-by-unit gold analysis of a candidate; tasks produce it, the base class derives the rest."""

    # per unit: passes its local check
    ok: list[bool]
    # per unit: what the unit should be given the units before it (None where nothing fits, e.g. extra lines)
    expected: list[str | None]
    # per unit: why it fails ("" where it passes)
    reasons: list[str]
    # per unit: the text one local check looks at (the unit plus only the context it is checked against);
    # empty where the task does not provide them (see `Task.unit_views`)
    views: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return bool(self.ok) and all(self.ok)


class UnitLog:
    """Collects an `Analysis` one unit at a time (what each task's `analyse` builds)."""

    def __init__(self) -> None:
        self.ok: list[bool] = []
        self.expected: list[str | None] = []
        self.reasons: list[str] = []
        self.views: list[str] = []

    def add(self, ok: bool, expected: str | None, reason: str = "", view: str | None = None) -> None:
        self.ok.append(ok)
        self.expected.append(expected)
        self.reasons.append(reason)
        if view is not None:
            self.views.append(view)

    def analysis(self) -> Analysis:
        return Analysis(self.ok, self.expected, self.reasons, self.views)


@dataclass(frozen=True)
class LabelledResponse:
    """A response to a problem with its gold label: the flaw record if a flaw was injected, else None."""

    # the problem responded to
    problem: Problem
    # the response text (the reference solution, or a flawed copy of it)
    response: str
    # the injected flaw's record; None for a clean response
    flaw: FlawRecord | None


# ----------------------------------------------------------------------------------------------------------
# Task base class


# draws per flaw type before giving up on a problem (a draw is rejected if gold would not locate it exactly)
_INJECT_ATTEMPTS = 8

_NO_FLAW = re.compile(r"^\s*(no flaws?|none)\s*\.?\s*$", re.IGNORECASE)


def normalise(text: str) -> str:
    """Whitespace-insensitive form used to compare corrections (`" 12 * 3 = 36 "` equals `"12*3=36"`)."""
    return re.sub(r"\s+", "", text)


class Task:
    """Base class of every task. Subclasses set the class attributes and implement the `_` methods."""

    # registry name (what `get_task` takes)
    name: ClassVar[str] = ""
    # what a pointer counts ("step", "digit", "position", "clause", "line"); used in critique text
    unit: ClassVar[str] = "unit"
    # names of the flaw injectors (`inject_flaw(flaw_type=None)` picks one at random)
    flaw_types: ClassVar[tuple[str, ...]] = ()
    # highest difficulty the task can generate (None: unbounded)
    max_difficulty: ClassVar[int | None] = None

    # --- to implement ---------------------------------------------------------------------------------

    def _generate(self, rng: random.Random, difficulty: int) -> tuple[str, str, dict[str, Any]]:
        """One problem at `difficulty`: (prompt, solution, data)."""
        raise NotImplementedError

    def analyse(self, problem: Problem, candidate: str) -> Analysis:
        """Unit-by-unit gold analysis. Must never raise on any string `candidate`."""
        raise NotImplementedError

    def _inject(self, problem: Problem, rng: random.Random, flaw_type: str) -> tuple[str, FlawRecord]:
        """The reference solution with one flaw of `flaw_type`, and its record."""
        raise NotImplementedError

    def _validate_data(self, problem: Problem) -> None:
        """Raise ValueError if `problem.data` lacks what the gold checker needs."""

    def options(self) -> dict[str, Any]:
        """The constructor options, so a config can rebuild the same task."""
        return {}

    # --- sampling -------------------------------------------------------------------------------------

    def sample(self, n: int, difficulty: int, seed: int) -> list[Problem]:
        """`n` problems at `difficulty`; deterministic in (n, difficulty, seed, options).

        Problem `i` depends only on (difficulty, seed, i, options), so `sample(5, ...)` is a prefix of
        `sample(10, ...)` and splits grow without reshuffling.
        """
        self._check_sample_args(n, difficulty)
        problems = []
        for i in range(n):
            rng = random.Random(f"{self.name}/{difficulty}/{seed}/{i}")
            prompt, solution, data = self._generate(rng, difficulty)
            problems.append(
                Problem(
                    self.name, f"{self.name}-d{difficulty}-s{seed}-{i}", difficulty, prompt, solution, data
                )
            )
        return problems

    def _check_sample_args(self, n: int, difficulty: int) -> None:
        if not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        top = self.max_difficulty
        if (
            not isinstance(difficulty, numbers.Integral)
            or difficulty < 1
            or (top is not None and difficulty > top)
        ):
            span = f"1..{top}" if top is not None else ">= 1"
            raise ValueError(f"task {self.name!r}: difficulty must be an int in {span}, got {difficulty!r}")

    # --- gold -----------------------------------------------------------------------------------------

    def check(self, problem: Problem, candidate: str) -> Verdict:
        """Gold: is `candidate` right, and at which unit does it first go wrong? Never raises on text."""
        analysis = self.analyse(problem, _as_text(candidate))
        if analysis.correct:
            return Verdict(True, None, "")
        first = next((i for i, ok in enumerate(analysis.ok) if not ok), len(analysis.ok))
        reason = analysis.reasons[first] if first < len(analysis.reasons) else "no units"
        return Verdict(False, first, reason)

    def unit_checks(self, problem: Problem, candidate: str) -> list[bool]:
        """Per unit of `candidate`, whether it passes its local check (what one careful look would find)."""
        return list(self.analyse(problem, _as_text(candidate)).ok)

    def unit_views(self, problem: Problem, candidate: str) -> list[str]:
        """Per unit of `candidate`, the text its local check looks at: the unit plus only the context it is
        checked against. What a step verifier or a process reward model scores one unit by; the view never
        contains what the unit should be. Tasks that do not define views raise ValueError."""
        analysis = self.analyse(problem, _as_text(candidate))
        if len(analysis.views) != len(analysis.ok):
            raise ValueError(f"task {self.name!r} does not provide local views of its {self.unit}s")
        return list(analysis.views)

    def correction(self, problem: Problem, candidate: str, location: int) -> str | None:
        """What unit `location` of `candidate` should be, given the units before it (None if out of range)."""
        expected = self.analyse(problem, _as_text(candidate)).expected
        return expected[location] if 0 <= location < len(expected) else None

    def correction_right(self, problem: Problem, candidate: str, location: int, correction: str) -> bool:
        """Is `correction` a right replacement for unit `location`? Default: equal up to whitespace."""
        expected = self.correction(problem, candidate, location)
        return expected is not None and normalise(correction) == normalise(expected)

    # --- flaws ----------------------------------------------------------------------------------------

    def inject_flaw(
        self, problem: Problem, seed: int = 0, flaw_type: str | None = None
    ) -> tuple[str, FlawRecord]:
        """The reference solution with one injected flaw, and the record of what was injected where.

        `flaw_type=None` picks one of the task's flaw types at random (by `seed`). The flawed text always
        fails gold at exactly `record.location`; injectors that cannot make a flaw of the asked type on this
        problem raise ValueError.
        """
        if flaw_type is not None and flaw_type not in self.flaw_types:
            raise ValueError(
                f"task {self.name!r} has no flaw type {flaw_type!r}; known: {list(self.flaw_types)}"
            )
        rng = random.Random(f"{self.name}/flaw/{problem.id}/{seed}")
        kinds = [flaw_type] if flaw_type is not None else rng.sample(self.flaw_types, len(self.flaw_types))
        errors = []
        for kind in kinds:
            for _ in range(_INJECT_ATTEMPTS):
                try:
                    text, record = self._inject(problem, rng, kind)
                except ValueError as e:  # this kind does not apply to this problem; try the next
                    errors.append(f"{kind}: {e}")
                    break
                # the contract every measurement relies on: gold finds the flaw exactly where recorded
                if self.check(problem, text).first_error == record.location:
                    return text, record
            else:
                errors.append(f"{kind}: no flaw that gold locates at its recorded {self.unit}")
        raise ValueError(
            f"task {self.name!r}: no flaw could be injected into {problem.id}: {'; '.join(errors)}"
        )

    def labelled_responses(
        self, problems: Iterable[Problem], seed: int, flawed_fraction: float = 0.5
    ) -> list[LabelledResponse]:
        """A set of responses with gold labels: each problem's reference, or a flawed copy with its record.

        Exactly `round(flawed_fraction * n)` responses carry a flaw (chosen by `seed`), which gives the
        balanced sets the discrimination and critique measurements (D, C) are defined on.
        """
        problems = list(problems)
        if not 0.0 <= flawed_fraction <= 1.0:
            raise ValueError(f"flawed_fraction must be in [0, 1], got {flawed_fraction}")
        rng = random.Random(f"{self.name}/labelled/{seed}")
        flawed = set(rng.sample(range(len(problems)), round(flawed_fraction * len(problems))))
        out = []
        for i, p in enumerate(problems):
            if i in flawed:
                text, record = self.inject_flaw(p, seed=seed)
                out.append(LabelledResponse(p, text, record))
            else:
                out.append(LabelledResponse(p, p.solution, None))
        return out

    # --- critiques ------------------------------------------------------------------------------------

    def render_critique(self, critique: Critique) -> str:
        """Critique as text: `"<unit> <index>: <correction>"`, or `"no flaw"`."""
        if critique.location is None:
            return "no flaw"
        return f"{self.unit} {critique.location}: {critique.correction or ''}".rstrip()

    def parse_critique(self, text: str) -> Critique | None:
        """Inverse of `render_critique` (first line only); None if the text is not a critique of this task."""
        line = _as_text(text).strip().split("\n", 1)[0]
        if _NO_FLAW.match(line):
            return Critique(None, None)
        m = re.match(rf"^\s*{re.escape(self.unit)}\s+(\d{{1,9}})\s*(?::\s?(.*))?$", line, re.IGNORECASE)
        if not m:
            return None
        return Critique(int(m.group(1)), m.group(2) if m.group(2) is not None else None)

    def check_critique(
        self,
        problem: Problem,
        candidate: str,
        critique: Critique | str,
        record: FlawRecord | None = None,
    ) -> CritiqueVerdict:
        """Gold for critiques: does it name a real flaw of `candidate`, and is its correction right?

        On a flawed candidate a critique is valid when the unit it points at fails gold's local check and
        its correction is what that unit should be; on a correct candidate, only "no flaw" is valid. With
        `record`, `names_injected` says whether it points at the recorded injected flaw.
        """
        candidate = _as_text(candidate)
        if isinstance(critique, str):
            parsed = self.parse_critique(critique)
            if parsed is None:
                names = None if record is None else False
                return CritiqueVerdict(False, False, False, False, names, "unreadable critique")
            critique = parsed
        analysis = self.analyse(problem, candidate)
        if critique.location is None:
            names = None if record is None else False
            if analysis.correct:
                return CritiqueVerdict(True, False, False, False, names, "no flaw, rightly")
            return CritiqueVerdict(
                False, False, False, False, names, "claims no flaw but the candidate is wrong"
            )
        loc = critique.location
        names = None if record is None else loc == record.location
        in_range = 0 <= loc < len(analysis.ok)
        real = in_range and not analysis.ok[loc]
        right = (
            in_range
            and critique.correction is not None
            and _safe_bool(lambda: self.correction_right(problem, candidate, loc, critique.correction))
        )
        if not real:
            reason = f"{self.unit} {loc} is not wrong" if in_range else f"{self.unit} {loc} does not exist"
        elif not right:
            reason = f"{self.unit} {loc} is wrong but the correction is not right"
        else:
            reason = "names a real flaw with a right correction"
        return CritiqueVerdict(real and right, True, real, right, names, reason)


def _as_text(candidate: Any) -> str:
    if not isinstance(candidate, str):
        raise TypeError(f"candidate must be a str, got {type(candidate).__name__}")
    return candidate


def _safe_bool(fn: Callable[[], bool]) -> bool:
    try:
        return bool(fn())
    except (ValueError, SyntaxError, RecursionError, MemoryError, OverflowError):
        return False


# ----------------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a task available to `get_task(name)` (also for tasks outside this package)."""

    def wrap(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a task named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_tasks() -> list[str]:
    """Names `get_task` accepts."""
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, built with `options` (unknown names and options are errors)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(available_tasks())}")
    try:
        return _REGISTRY[name](**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad options {sorted(options)}: {e}") from None


# ----------------------------------------------------------------------------------------------------------
# Dataset I/O

# column order of the flat schema shared by datasets, JSONL and Parquet
COLUMNS = ("task", "id", "difficulty", "prompt", "solution", "data")


class MalformedRowError(UserError, ValueError):
    """A row of a problem file that does not fit the schema; the message names the file and 1-based line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        # the offending file
        self.path = str(path)
        # 1-based line (JSONL) or row (Parquet, datasets); None when the whole file is unreadable
        self.line = line


def problem_to_record(problem: Problem) -> dict[str, Any]:
    """One flat row: `data` becomes a JSON string so every task shares one Arrow schema."""
    return {
        "task": problem.task,
        "id": problem.id,
        "difficulty": int(problem.difficulty),
        "prompt": problem.prompt,
        "solution": problem.solution,
        "data": json.dumps(problem.data, sort_keys=True, separators=(",", ":")),
    }


def problem_from_record(record: Any, path: str = "<records>", line: int | None = None) -> Problem:
    """A validated Problem from one flat row; any defect raises MalformedRowError naming `path:line`."""

    def bad(msg: str) -> MalformedRowError:
        return MalformedRowError(path, line, msg)

    if not isinstance(record, dict):
        raise bad(f"expected an object with fields {list(COLUMNS)}, got {type(record).__name__}")
    missing = [c for c in COLUMNS if c not in record]
    if missing:
        raise bad(f"missing field(s) {missing}")
    extra = sorted(set(record) - set(COLUMNS))
    if extra:
        raise bad(f"unknown field(s) {extra}; the schema is {list(COLUMNS)}")
    for c in ("task", "id", "prompt", "solution"):
        if not isinstance(record[c], str):
            raise bad(f"field {c!r} must be a string, got {type(record[c]).__name__}")
    difficulty = record["difficulty"]
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
        raise bad(f"field 'difficulty' must be an int >= 1, got {difficulty!r}")
    data = record["data"]
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise bad(f"field 'data' is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad(f"field 'data' must be a JSON object, got {type(data).__name__}")
    if record["task"] not in _REGISTRY:
        raise bad(f"unknown task {record['task']!r}; known tasks: {', '.join(available_tasks())}")
    problem = Problem(record["task"], record["id"], difficulty, record["prompt"], record["solution"], data)
    task = get_task(problem.task)
    try:
        task._validate_data(problem)
    except (ValueError, TypeError, KeyError) as e:
        raise bad(f"bad 'data' for task {problem.task!r}: {e}") from None
    verdict = task.check(problem, problem.solution)
    if not verdict.correct:
        raise bad(
            f"the reference solution fails the gold checker at {task.unit} {verdict.first_error}: "
            f"{verdict.reason}"
        )
    return problem


def to_dataset(problems: Iterable[Problem]):
    """A `datasets.Dataset` in the flat schema (`datasets` is optional: the `datasets` extra)."""
    datasets = require("datasets", "datasets", "to_dataset")

    rows = [problem_to_record(p) for p in problems]
    features = datasets.Features(
        {c: datasets.Value("int64" if c == "difficulty" else "string") for c in COLUMNS}
    )
    return datasets.Dataset.from_list(rows, features=features)


def from_dataset(dataset, source: str = "<dataset>") -> list[Problem]:
    """Problems from a `datasets.Dataset` (or any iterable of rows) in the flat schema; rows validated."""
    return [problem_from_record(dict(row), source, i) for i, row in enumerate(dataset, start=1)]


def save_problems(problems: Iterable[Problem], path: str | Path) -> Path:
    """Write a split to `.jsonl` (one row per line) or `.parquet`, chosen by the suffix."""
    path = Path(path)
    rows = [problem_to_record(p) for p in problems]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(c, pa.int64() if c == "difficulty" else pa.string()) for c in COLUMNS])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    else:
        raise ValueError(f"{path}: unknown format {path.suffix!r}; use .jsonl or .parquet")
    return path


def load_problems(path: str | Path) -> list[Problem]:
    """Read a split written by `save_problems` or by hand; errors name the file and 1-based line/row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        problems = []
        with path.open("rb") as f:  # bytes, decoded line by line, so a bad byte is reported at its own line
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise MalformedRowError(str(path), lineno, f"not UTF-8 text: {e}") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MalformedRowError(
                        str(path), lineno, f"not valid JSON: {e.msg} (column {e.colno})"
                    ) from None
                problems.append(problem_from_record(row, str(path), lineno))
        return problems
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise MalformedRowError(str(path), None, f"not a readable Parquet file: {e}") from None
        return [problem_from_record(row, str(path), i) for i, row in enumerate(rows, start=1)]
    raise ValueError(f"{path}: unknown format {path.suffix!r}; use .jsonl or .parquet")


def load_dataset(path: str | Path, cache_dir: str | Path | None = None):
    """A problem file loaded through `datasets` (`load_dataset("json"|"parquet")`), validated first.

    Validation runs our own reader, so a malformed file fails with file and line before `datasets` sees it.
    `datasets` is optional (the `datasets` extra).
    """
    datasets = require("datasets", "datasets", "load_dataset")

    path = Path(path)
    load_problems(path)
    builder = {".jsonl": "json", ".parquet": "parquet"}[path.suffix]
    features = datasets.Features(
        {c: datasets.Value("int64" if c == "difficulty" else "string") for c in COLUMNS}
    )
    return datasets.load_dataset(
        builder,
        data_files=str(path),
        split="train",
        features=features,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
