"""The experiment registry: plugins found through the `oversight.experiments` entry-point group.

A plugin is an `Experiment`: a name, a dataclass of its options (`experiment.*` in the config) and a
`run(ctx)` function. Any installed package can add one by declaring an entry point, e.g. in pyproject.toml:

    [project.entry-points."oversight.experiments"]
    my_protocol = "my_package.my_protocol:EXPERIMENT"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

    from oversight.config import Config

ENTRY_POINT_GROUP = "oversight.experiments"


@dataclass
class RunContext:
    """What an experiment's `run` receives: the validated config and the run's folder, tracker and mesh."""

    cfg: Config
    options: Any  # the experiment's own options dataclass
    run_dir: Path
    tracker: Any
    mesh: jax.sharding.Mesh


@dataclass(frozen=True)
class Experiment:
    name: str
    # One line for `oversight --list-experiments`.
    description: str
    # Dataclass of the experiment's options; every key of `experiment.*` except `name` must be a field.
    options: type
    run: Callable[[RunContext], None]


def available_experiments() -> dict[str, Experiment]:
    """Every registered experiment, by name. A broken plugin raises, naming its entry point."""
    found: dict[str, Experiment] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            exp = ep.load()
        except Exception as e:
            raise ImportError(f"experiment plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if not isinstance(exp, Experiment):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an oversight.registry.Experiment")
        if exp.name != ep.name:
            raise ValueError(f"entry point {ep.name!r} points to an experiment named {exp.name!r}")
        found[exp.name] = exp
    return found


def get_experiment(name: str) -> Experiment:
    experiments = available_experiments()
    if name not in experiments:
        known = ", ".join(sorted(experiments)) or "none (is the package installed with pip install -e .?)"
        raise KeyError(f"unknown experiment {name!r}; known experiments: {known}")
    return experiments[name]
