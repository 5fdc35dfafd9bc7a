"""Results as code: Markdown tables of every experiment's results over seeds, built from run folders.

    oversight report runs/results                            # print
    oversight report runs/results --output docs/results.md   # write the file
    oversight report runs/results/rlhf --update docs/results.md  # rewrite the rlhf section, keep the others

A run folder is any folder holding `config.yaml` and `results.jsonl`. Runs are grouped by experiment and by the
config values they differ in other than the seed (a sweep over model sizes gives one table per size). Each
table is headed by the command that reproduces it (rebuilt from the runs' `.hydra/overrides.yaml`), the git
commits, dates and machine from `run_info.json`, and has one row per measured quantity: the mean over seeds
with a Student-t 95% interval over the seeds' values, the value of each seed, and, where there is one seed
only, that run's own interval over its examples.

Pipeline of pure functions: `load_runs` -> `group_runs` -> `aggregate` -> `render`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.jsonl"
RUN_INFO_FILE = "run_info.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
HYDRA_FILE = Path(".hydra") / "hydra.yaml"
SWEEP_FILE = "multirun.yaml"  # Hydra writes it at the top of a sweep folder
# Columns every results row has; any other column says what was measured (method, N, level, arm, ...).
ROW_COLUMNS = ("metric", "value", "ci_low", "ci_high", "n")
# Config keys that do not set runs apart: the seed is what a table aggregates over, and the tracker decides
# where results are logged, not what they are.
NOT_A_SETTING = ("seed", "tracker.")
LEVEL = 0.95


@dataclass(frozen=True)
class Run:
    folder: Path
    experiment: str
    seed: int | None
    # resolved config, flattened to dotted keys
    config: dict[str, Any]
    # the command-line overrides the run was started with (Hydra's `.hydra/overrides.yaml`)
    overrides: tuple[str, ...]
    # run_info.json: git commit, start time, machine
    info: dict[str, Any]
    # rows of results.jsonl
    results: tuple[dict[str, Any], ...]
    # the config group options it composed (Hydra's runtime choices: model=smollm2_135m, task=...)
    choices: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Runs of one experiment with the same config apart from the seed."""

    experiment: str
    # the config values that set this group apart from the experiment's other groups
    settings: dict[str, Any]
    runs: tuple[Run, ...]
    # what its title names: of the settings and config group options that set it apart, those the runs'
    # command lines gave (a model preset sets dozens of values; its name says which); all the settings when
    # that would not tell the groups apart
    label: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One measured quantity of a group, over its seeds."""

    metric: str
    # the columns that say which quantity this is (method, N, level, arm, ...)
    labels: dict[str, Any]
    # one entry per run of the group (seed order); None where that run did not measure it
    values: tuple[float | None, ...]
    n: tuple[int | None, ...]
    # the run's own interval, kept for a quantity measured by one run only
    within: tuple[float | None, float | None]

    @property
    def measured(self) -> list[float]:
        return [v for v in self.values if v is not None and math.isfinite(v)]


# --- load ----------------------------------------------------------------------------------------------


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}{key}.")
    return flat


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value


def find_run_folders(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every folder at or below `paths` holding both `config.yaml` and `results.jsonl`, in path order."""
    folders: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such folder: {root}")
        candidates = [root / RESULTS_FILE, *root.rglob(RESULTS_FILE)]
        folders |= {p.parent for p in candidates if p.is_file() and (p.parent / CONFIG_FILE).is_file()}
    return sorted(folders)


def _read_results(path: Path) -> tuple[dict[str, Any], ...]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from e
    return tuple(rows)


def _own_value(override: str, config: dict[str, Any]) -> str:
    key, _, value = override.partition("=")
    name = key.lstrip("+~")
    if "," in value and name in config and not isinstance(config[name], list | dict):
        return f"{key}={config[name]}"
    return override


def load_run(folder: Path) -> Run:
    config = _flatten(OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE), resolve=True))
    info_path = folder / RUN_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    overrides_path = folder / OVERRIDES_FILE
    if overrides_path.is_file():
        overrides = tuple(OmegaConf.to_container(OmegaConf.load(overrides_path)))
    else:  # no Hydra record: the command line as recorded, less the program and its flags, with a swept
        # list (`seed=0,1,2` of a -m command) replaced by the value this run's config.yaml holds
        overrides = tuple(_own_value(a, config) for a in info.get("command", [])[1:] if not a.startswith("-"))
    seed = config.get("seed", info.get("seed"))
    hydra_path = folder / HYDRA_FILE
    choices = {}
    if hydra_path.is_file():
        runtime = OmegaConf.to_container(OmegaConf.load(hydra_path)).get("hydra", {}).get("runtime", {})
        choices = {k: v for k, v in (runtime.get("choices") or {}).items() if not k.startswith("hydra/")}
    return Run(
        folder=folder,
        experiment=str(config.get("experiment.name", "?")),
        seed=None if seed is None else int(seed),
        config=config,
        overrides=overrides,
        info=info,
        results=_read_results(folder / RESULTS_FILE),
        choices=choices,
    )


def load_runs(paths: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run at or below `paths`; FileNotFoundError when there is none."""
    paths = list(paths)
    folders = find_run_folders(paths)
    if not folders:
        raise FileNotFoundError(
            f"no run folders (with {CONFIG_FILE} and {RESULTS_FILE}) under {', '.join(map(str, paths))}"
        )
    return [load_run(f) for f in folders]


# --- group ---------------------------------------------------------------------------------------------


def _is_setting(key: str) -> bool:
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_A_SETTING)


def _order(value: Any) -> tuple:
    """Sort key: numbers by value (64 before 128), before anything else by its text."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return (0, value, "") if is_number else (1, 0, str(value))


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by experiment and by the config values they differ in other than the seed; groups in
    order of experiment name, then settings; runs in seed order."""
    groups = []
    for experiment in sorted({r.experiment for r in runs}):
        mine = [r for r in runs if r.experiment == experiment]
        keys = sorted({k for r in mine for k in r.config if _is_setting(k)})
        varying = [k for k in keys if len({_hashable(r.config.get(k)) for r in mine}) > 1]
        by_settings: dict[tuple, list[Run]] = {}
        for run in mine:
            by_settings.setdefault(tuple(_hashable(run.config.get(k)) for k in varying), []).append(run)
        mine_groups = []
        for key in sorted(by_settings, key=lambda t: [_order(v) for v in t]):
            members = sorted(by_settings[key], key=lambda r: (r.seed is None, r.seed or 0, str(r.folder)))
            mine_groups.append(Group(experiment, dict(zip(varying, key, strict=True)), tuple(members)))
        groups += _labelled(mine_groups)
    return groups


def _labelled(groups: list[Group]) -> list[Group]:
    """The groups of one experiment with their titles' settings: the varying settings and config group
    options that some run's command line gave, if those tell every group apart; else every varying setting."""
    runs = [r for g in groups for r in g.runs]
    given = {o.partition("=")[0].lstrip("+~") for r in runs for o in r.overrides}
    options = sorted(k for k in given if len({r.choices.get(k) for r in runs}) > 1)

    def label(g: Group) -> dict[str, Any]:
        shown = {k: v for k, v in g.settings.items() if k in given}
        return shown | {k: g.runs[0].choices.get(k) for k in options}

    labels = [label(g) for g in groups]
    if len({tuple(sorted((k, str(v)) for k, v in lb.items())) for lb in labels}) < len(groups) or not all(labels):
        labels = [g.settings for g in groups]
    return [dataclasses.replace(g, label=lb) for g, lb in zip(groups, labels, strict=True)]


# --- aggregate -----------------------------------------------------------------------------------------


def seed_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval for the mean of per-seed values (NaN bounds below 2 values)."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, math.nan, math.nan)
    from scipy import stats  # here, not at the top: every run's closing digest imports this module

    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def _label_columns(per_run: list[list[dict[str, Any]]]) -> list[str]:
    """The columns that say which quantity a row is: those taking the same set of values in every run (N in
    {1, 4, 64}, arm, level). A column whose values change from seed to seed is a measurement (the largest
    number of checks used), not a label. Falls back to every column when that leaves two rows alike."""
    present = [rows for rows in per_run if rows]
    columns = sorted({c for rows in present for r in rows for c in r if c not in ROW_COLUMNS})
    value_sets = {c: [frozenset(_hashable(r.get(c)) for r in rows) for rows in present] for c in columns}
    labels = [c for c in columns if all(s == value_sets[c][0] for s in value_sets[c])]
    for chosen in (labels, columns):
        if all(
            len({tuple(_hashable(r.get(c)) for c in chosen) for r in rows}) == len(rows) for rows in present
        ):
            return chosen
    return columns


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def aggregate(group: Group) -> list[Row]:
    """One row per measured quantity (metric and label columns), in the order the first run wrote them."""
    metrics = list(dict.fromkeys(r["metric"] for run in group.runs for r in run.results))
    out = []
    for metric in metrics:
        per_run = [[r for r in run.results if r["metric"] == metric] for run in group.runs]
        labels = _label_columns(per_run)
        keys: dict[tuple, dict[str, Any]] = {}
        for rows in per_run:
            for r in rows:
                keys.setdefault(tuple(_hashable(r.get(c)) for c in labels), {c: r.get(c) for c in labels})
        for key, label_values in keys.items():
            found = [
                next((r for r in rows if tuple(_hashable(r.get(c)) for c in labels) == key), None)
                for rows in per_run
            ]
            values = tuple(None if r is None else _number(r.get("value")) for r in found)
            ns = tuple(None if r is None or r.get("n") is None else int(r["n"]) for r in found)
            only = [r for r in found if r is not None]
            within = (
                (_number(only[0].get("ci_low")), _number(only[0].get("ci_high")))
                if len(only) == 1
                else (None, None)
            )
            shown = {c: v for c, v in label_values.items() if v is not None}
            out.append(Row(metric, shown, values, ns, within))
    return out


# --- the command that reproduces a set of runs ---------------------------------------------------------


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _is_seed(key: str) -> bool:
    return key.lstrip("+~") == "seed"


def reproduce_command(runs: Sequence[Run], *, extra: Sequence[str] = ()) -> str:
    """The `oversight` command that makes `runs` again: their overrides with every value a run used, lists
    comma-joined as a Hydra sweep (`-m`) when there are several runs. Runs whose overrides are not the product
    of those lists (a sweep, then single runs on top) get one command per line instead."""
    per_run = []
    for run in runs:
        pairs = [_split(o) for o in run.overrides if not o.lstrip("+~").startswith("hydra.")]
        if not any(k.lstrip("+") == "experiment" for k, _ in pairs):
            pairs.insert(0, ("experiment", run.experiment))
        if not any(_is_seed(k) for k, _ in pairs) and run.seed is not None:
            pairs.append(("seed", str(run.seed)))
        per_run.append(dict(pairs))
    keys = list(dict.fromkeys(k for d in per_run for k in d))
    keys.sort(key=lambda k: (k.lstrip("+") != "experiment", _is_seed(k)))  # experiment first, seed last
    values = {k: list(dict.fromkeys(d.get(k) for d in per_run)) for k in keys}
    for k in keys:
        if _is_seed(k) and None not in values[k]:
            values[k].sort(
                key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else v)
            )
    distinct = {tuple(d.get(k) for k in keys) for d in per_run}
    is_product = all(None not in v for v in values.values()) and math.prod(map(len, values.values())) == len(
        distinct
    )
    if not is_product:
        return "\n".join(reproduce_command([r], extra=extra) for r in runs)
    words = ["oversight", *(["-m"] if len(distinct) > 1 else [])]
    words += [f"{k}={','.join(values[k])}" for k in keys] + list(extra)
    return " ".join(shlex.quote(w) for w in words)


def regenerate_commands(runs: Sequence[Run]) -> list[str]:
    """Commands that remake every run in its own folder: one `-m` command per sweep folder (the folder Hydra
    wrote `multirun.yaml` in) with its `hydra.sweep.dir`, and one command per run started on its own."""
    sweeps: dict[Path, list[Run]] = {}
    singles = []
    for run in runs:
        if (run.folder.parent / SWEEP_FILE).is_file():
            sweeps.setdefault(run.folder.parent, []).append(run)
        else:
            singles.append(run)
    commands = [
        reproduce_command(sorted(members, key=lambda r: str(r.folder)), extra=[f"hydra.sweep.dir={folder}"])
        for folder, members in sorted(sweeps.items())
    ]
    commands += [reproduce_command([r], extra=[f"hydra.run.dir={r.folder}"]) for r in singles]
    return commands


# --- render --------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """A number as the tables print it: 3 decimals, 3 significant digits below 0.01, 1 decimal from 1000."""
    if value is None:
        return "–"
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.3f}"
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.3g}"


def _interval(low: float | None, high: float | None) -> str:
    return (
        "–"
        if low is None or high is None or math.isnan(low) or math.isnan(high)
        else f"[{fmt(low)}, {fmt(high)}]"
    )


def _quantity(row: Row) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in row.labels.items())
    return f"`{row.metric}`" + (f" ({labels})" if labels else "")


def _ns(ns: Sequence[int | None]) -> str:
    known = sorted({n for n in ns if n is not None})
    if not known:
        return "–"
    return str(known[0]) if len(known) == 1 else f"{known[0]}–{known[-1]}"


def _provenance(runs: Sequence[Run]) -> str:
    commits = []
    for run in runs:
        commit = run.info.get("git_commit")
        label = (
            "unknown"
            if not commit
            else commit[:7] + (" (uncommitted changes)" if run.info.get("git_dirty") else "")
        )
        commits.append(label)
    dates = sorted({str(r.info.get("start_time_utc", ""))[:10] for r in runs} - {""})
    machines = list(
        dict.fromkeys(str(r.info.get("cpu") or r.info.get("platform") or "not recorded") for r in runs)
    )
    has_cpu = any(r.info.get("cpu") for r in runs)
    parts = [
        "commit " + ", ".join(dict.fromkeys(commits)),
        "started " + (", ".join(dates) if dates else "on an unrecorded date"),
        ("CPU " if has_cpu else "machine ") + "; ".join(machines),
    ]
    return "; ".join(parts)


def _folders(runs: Sequence[Run]) -> str:
    folders = [str(r.folder) for r in runs]
    if len(folders) == 1:
        return f"`{folders[0]}`"
    parent = os.path.commonpath(folders)
    names = [os.path.relpath(f, parent) for f in folders]
    return f"`{parent}/` {{{', '.join(names)}}}"


def _seeds(runs: Sequence[Run]) -> str:
    return ", ".join("?" if r.seed is None else str(r.seed) for r in runs)


def common_labels(rows: Sequence[Row]) -> tuple[dict[str, Any], list[Row]]:
    """The label columns every row has with the same value (the task, its difficulty), and the rows without
    them: said once above a table instead of on each row."""
    if not rows:
        return {}, list(rows)
    shared = {k: v for k, v in rows[0].labels.items() if all(r.labels.get(k, object()) == v for r in rows)}
    stripped = [
        Row(r.metric, {k: v for k, v in r.labels.items() if k not in shared}, r.values, r.n, r.within)
        for r in rows
    ]
    return shared, stripped


def render_group(group: Group, rows: Sequence[Row]) -> str:
    runs = group.runs
    shared, rows = common_labels(rows)
    title = group.experiment
    if group.label:
        # a key absent from a run's config: the run predates that setting (its code had the default's behaviour)
        title += " — " + ", ".join(
            f"{k}={v}" if v is not None else f"{k} unset" for k, v in sorted(group.label.items())
        )
    seeds = [r.seed for r in runs]
    lines = [
        f"### {title}",
        "",
        "```bash",
        reproduce_command(runs),
        "```",
        "",
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} (seed {_seeds(runs)}); {_provenance(runs)}; "
        f"folders {_folders(runs)}.",
    ]
    if shared:
        lines[-1] += " Every row: " + ", ".join(f"{k}={v}" for k, v in shared.items()) + "."
    if len(set(seeds)) < len(seeds):
        lines.append("**Note:** some seeds occur in more than one run; each run counts once below.")
    lines += [
        "",
        f"| quantity | seeds | mean | 95% interval | per seed ({_seeds(runs)}) | n per run |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        k = len(row.measured)
        if k == 1:
            mean, interval = fmt(row.measured[0]), _interval(*row.within)
            interval = interval + " within run" if interval != "–" else interval
        else:
            mean, low, high = seed_interval(row.measured)
            mean, interval = fmt(mean), _interval(low, high)
        per_seed = ", ".join(fmt(v) for v in row.values)
        lines.append(f"| {_quantity(row)} | {k} | {mean} | {interval} | {per_seed} | {_ns(row.n)} |")
    return "\n".join(lines) + "\n"


INTERVALS = (
    "**How to read the tables.** *mean*: the mean of the seeds' values. *95% interval*: a Student-t interval "
    "for that mean over the seeds' values (between-seed: each run counts once, whatever its n; it can pass a "
    "proportion's bounds of 0 and 1); for a quantity "
    "measured by one run only, that run's own 95% interval over its examples (Wilson or bootstrap, as its "
    "`results.jsonl` gives it), marked *within run*. *n per run*: the examples each run measured it on. "
    "Single seeds move with float rounding (CPU, library versions, any change that reorders sums) about as "
    "much as one seed differs from another, so compare means over seeds, not single runs."
)


FLOAT_PATH = "kernels"  # the run setting that picks the transformer's float path (oversight/config.py)


def float_path_pairs(groups: Sequence[Group]) -> list[tuple[Group, Group]]:
    """(default path, other path) pairs of groups alike in every setting but the float path."""

    def path(g: Group) -> str:
        return g.settings.get(FLOAT_PATH) or "auto"  # runs from before the setting existed: the default

    def rest(g: Group) -> dict[str, Any]:
        return {k: v for k, v in g.settings.items() if k != FLOAT_PATH}

    return [
        (base, other)
        for other in groups
        if path(other) != "auto"
        for base in groups
        if path(base) == "auto" and rest(base) == rest(other)
    ]


def render_float_path_check(
    base: Group, base_rows: Sequence[Row], other: Group, other_rows: Sequence[Row]
) -> str:
    """Each quantity on both float paths and their difference, paired by seed (a seed's data, initialisation
    and sampling keys are the same on both paths; only the rounding differs)."""
    name = f"{FLOAT_PATH}={other.settings[FLOAT_PATH]}"
    lines = [
        f"### float-path check: {name} against the default",
        "",
        f"The same seeds again with the transformer's products rounded another way (`{name}`, "
        "docs/usage.md). *difference*: this path minus the default, the mean of the per-seed differences with "
        "its Student-t 95% interval. A conclusion survives rounding if it holds on both paths.",
        "",
        "| quantity | default | " + name + " | difference | seeds |",
        "|---|---|---|---|---|",
    ]
    theirs = {(r.metric, _hashable(r.labels)): r for r in other_rows}
    for row in base_rows:
        match = theirs.get((row.metric, _hashable(row.labels)))
        if match is None:
            continue
        ours = dict(zip((r.seed for r in base.runs), row.values, strict=True))
        them = dict(zip((r.seed for r in other.runs), match.values, strict=True))
        diffs = [
            them[s] - ours[s]
            for s in ours
            if s in them and None not in (ours[s], them[s]) and math.isfinite(ours[s] - them[s])
        ]
        cells = []
        for r in (row, match):
            mean, low, high = seed_interval(r.measured)
            cells.append(f"{fmt(mean)} {_interval(low, high)}")
        mean, low, high = seed_interval(diffs)
        lines.append(
            f"| {_quantity(row)} | {cells[0]} | {cells[1]} | {fmt(mean)} {_interval(low, high)} | {len(diffs)} |"
        )
    return "\n".join(lines) + "\n"


def _report_folders(runs: Sequence[Run]) -> list[Path]:
    """The folders `oversight report` is given to find `runs`: each sweep's folder, and each run started alone."""
    return sorted({r.folder.parent if (r.folder.parent / SWEEP_FILE).is_file() else r.folder for r in runs})


def render_section(experiment: str, groups: Sequence[Group], output: str | None = None) -> str:
    """One experiment's section: the commands that remake its runs and rewrite this section of `output`, then
    one table per group. A section stands alone, so `merge` can replace it and keep the others."""
    runs = [r for g in groups for r in g.runs]
    folders = " ".join(shlex.quote(str(f)) for f in _report_folders(runs))
    rewrite = f"oversight report {folders}" + (f" --update {shlex.quote(output)}" if output else "")
    lines = [f"## {experiment}", "", "```bash", *regenerate_commands(runs), rewrite, "```", ""]
    rows = [aggregate(group) for group in groups]
    lines += [render_group(group, r) for group, r in zip(groups, rows, strict=True)]
    of = {id(g): r for g, r in zip(groups, rows, strict=True)}
    lines += [render_float_path_check(b, of[id(b)], o, of[id(o)]) for b, o in float_path_pairs(groups)]
    return "\n".join(lines).rstrip() + "\n"


def document(sections: dict[str, str]) -> str:
    lines = [
        "# Results",
        "",
        "Generated from run folders by `oversight report` (`oversight/report.py`); do not edit by hand. "
        f"Covers: {', '.join(f'`{e}`' for e in sorted(sections))}. Each section starts with the commands that "
        "remake its runs and rewrite it (`--update` replaces the sections of the experiments it finds and "
        "keeps the others, each with the commit it was measured at).",
        "",
        INTERVALS,
        "",
    ]
    return "\n".join(lines) + "\n" + "\n".join(sections[e] for e in sorted(sections))


def render(groups: Sequence[Group], *, output: str | None = None) -> str:
    """The whole Markdown document: what it covers, how to read it, one section per experiment."""
    experiments = list(dict.fromkeys(g.experiment for g in groups))
    return document(
        {e: render_section(e, [g for g in groups if g.experiment == e], output) for e in experiments}
    )


def sections(text: str) -> dict[str, str]:
    """A results document's sections by experiment (each from its `## ` heading to the next)."""
    parts = ("\n" + text).split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): ("## " + part).rstrip() + "\n" for part in parts}


def merge(current: str, update: str) -> str:
    """The results document `current` with the sections of `update` in place of its own sections of the same
    experiments."""
    return document(sections(current) | sections(update))


def report(paths: Iterable[str | os.PathLike], *, output: str | None = None) -> str:
    """Markdown results tables of every run at or below `paths`; `output`: the file the commands rewrite."""
    return render(group_runs(load_runs(paths)), output=output)


def run_digest(
    run_dir: Path, *, description: str = "", choices: dict[str, str] | None = None, limit: int = 12
) -> str:
    """What a finished run prints last: the experiment and what it measures, what it ran on, its results with
    their 95% intervals, and where they are. Empty where the run wrote no results (e.g. not process 0)."""
    run_dir = _shown(Path(run_dir))
    if not (run_dir / RESULTS_FILE).is_file() or not (run_dir / CONFIG_FILE).is_file():
        return ""
    run = load_run(run_dir)
    shared, rows = common_labels([_as_row(r) for r in run.results])
    setup = [f"seed {run.seed}"]
    setup += [f"{g}={choices[g]}" for g in ("task", "model") if choices and g in choices]
    setup += [f"{k}={v}" for k, v in shared.items() if not (choices and k in choices)]
    lines = [
        f"{run.experiment} finished" + (f": {description}" if description else ""),
        "Run: " + ", ".join(setup),
    ]
    names = [_quantity(row).replace("`", "") for row in rows[:limit]]
    width = max(map(len, names), default=0)
    for name, row in zip(names, rows[:limit], strict=False):
        interval = _interval(*row.within)
        interval = f"95% interval {interval}" if interval != "–" else ""
        if row.values[0] is None:  # a rate over no cases, or a quantity the run could not measure
            interval = "not measurable: no cases" if row.n[0] == 0 else "not measured"
        lines.append(f"  {name:{width}}  {fmt(row.values[0]):>7}  {interval:30}  n={_ns(row.n)}".rstrip())
    if len(rows) > limit:
        lines.append(f"  ... and {len(rows) - limit} more rows")
    table_of = run_dir.parent if (run_dir.parent / SWEEP_FILE).is_file() else run_dir
    lines.append(
        f"Results: {run_dir / RESULTS_FILE} (per-step metrics: metrics.jsonl, next to it)\n"
        f"As a Markdown table: oversight report {table_of}"
    )
    return "\n".join(lines)


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies inside it (what a user would type)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _as_row(r: dict[str, Any]) -> Row:
    labels = {c: v for c, v in r.items() if c not in ROW_COLUMNS and v is not None}
    n = None if r.get("n") is None else int(r["n"])
    return Row(
        r["metric"],
        labels,
        (_number(r.get("value")),),
        (n,),
        (_number(r.get("ci_low")), _number(r.get("ci_high"))),
    )
