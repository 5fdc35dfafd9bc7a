"""The experiment registry: plugins found through the `oversight.experiments` entry-point group.

A plugin is an `Experiment`: a name, a dataclass of its options (`experiment.*` in the config) and a
`run(ctx)` function. Two ways to add one:

- a module in this checkout's `experiments/` folder (installed as the `oversight.experiments` package) that
  defines `EXPERIMENT`: found by scanning the package, so a new file works at once, with no reinstall;
- any installed package, by declaring an entry point, e.g. in its pyproject.toml (then `pip install` it):

    [project.entry-points."oversight.experiments"]
    my_protocol = "my_package.my_protocol:EXPERIMENT"
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points

from oversight.pipeline.context import RunContext

__all__ = ["ENTRY_POINT_GROUP", "Experiment", "RunContext", "available_experiments", "get_experiment"]

ENTRY_POINT_GROUP = "oversight.experiments"


@dataclass(frozen=True)
class Experiment:
    name: str
    # One line for `oversight --list-experiments`.
    description: str
    # Dataclass of the experiment's options; every key of `experiment.*` except `name` must be a field.
    options: type
    run: Callable[[RunContext], None]


def _entry_point_experiments() -> Iterator[tuple[str, Experiment]]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            exp = ep.load()
        except Exception as e:
            raise ImportError(f"experiment plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if not isinstance(exp, Experiment):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an oversight.registry.Experiment")
        if exp.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} points to an experiment named {exp.name!r}")
        yield f"entry point {ep.name!r} ({ep.value})", exp


def _package_experiments() -> Iterator[tuple[str, Experiment]]:
    """Every module of the `oversight.experiments` package (this checkout's plugins) that defines `EXPERIMENT`."""
    package = importlib.import_module("oversight.experiments")
    for info in pkgutil.walk_packages(package.__path__, "oversight.experiments."):
        try:
            module = importlib.import_module(info.name)
        except Exception as e:
            raise ImportError(f"experiment module {info.name} failed to load: {e}") from e
        exp = getattr(module, "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            yield f"module {info.name}", exp


def available_experiments() -> dict[str, Experiment]:
    """Every registered experiment, by name. A broken plugin raises, naming its entry point or module; two
    different experiments under one name are an error."""
    found: dict[str, tuple[str, Experiment]] = {}
    for where, exp in [*_entry_point_experiments(), *_package_experiments()]:
        if exp.name in found and found[exp.name][1] is not exp:
            raise ValueError(f"two experiments are named {exp.name!r}: {found[exp.name][0]} and {where}")
        found.setdefault(exp.name, (where, exp))
    return {name: exp for name, (_, exp) in found.items()}


def get_experiment(name: str) -> Experiment:
    experiments = available_experiments()
    if name not in experiments:
        known = ", ".join(sorted(experiments)) or "none (is the package installed with pip install -e .?)"
        raise KeyError(f"unknown experiment {name!r}; known experiments: {known}")
    return experiments[name]
