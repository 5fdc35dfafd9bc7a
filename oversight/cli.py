"""The `oversight` command: Hydra over the experiment registry.

oversight experiment=sft seed=1 model=small       # one run, folder under runs/
oversight -m experiment=sft seed=0,1               # a sweep, folders under multirun/
oversight --list-experiments                       # what is installed
oversight report runs/results --output docs/results.md   # Markdown tables over seeds from run folders
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from oversight.config import Config, register_configs
from oversight.registry import Experiment, RunContext, available_experiments, get_experiment
from oversight.tracking.run_info import code_version

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


class ConfigError(ValueError):
    """A config that composes but is wrong: unknown experiment, bad experiment option, bad value."""


def options_schema(options: type) -> DictConfig:
    """The structured config of an options dataclass, writable: nested core configs that are frozen
    dataclasses (`PPOConfig`) would otherwise refuse the YAML's values."""
    node = OmegaConf.structured(options)

    def writable(node) -> None:
        OmegaConf.set_readonly(node, None)
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            child = node._get_node(key)
            if OmegaConf.is_config(child):
                writable(child)

    writable(node)
    return node


def validate(cfg: DictConfig) -> tuple[Config, Experiment, object]:
    """Typed config, the experiment, and its options, or a `ConfigError` naming the offending key."""
    name = cfg.experiment.get("name")
    if name is None or OmegaConf.is_missing(cfg.experiment, "name"):
        raise ConfigError("no experiment chosen: pass experiment=NAME (oversight --list-experiments)")
    try:
        experiment = get_experiment(name)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    given = {k: v for k, v in cfg.experiment.items() if k != "name"}
    try:
        options_node = OmegaConf.merge(options_schema(experiment.options), given)
        options = OmegaConf.to_object(options_node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ConfigError(f"experiment.{key}: {e.msg if hasattr(e, 'msg') else e}") from None
    try:
        typed: Config = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(str(e)) from None
    return typed, experiment, options


def with_every_option(cfg: DictConfig, options) -> DictConfig:
    """`cfg` with the experiment node holding every option, defaults included: what the run folder records, so
    it keeps its meaning when a default changes later, and what a resumed run is compared with."""
    full = OmegaConf.to_container(cfg, resolve=True)
    full["experiment"] = {
        "name": cfg.experiment.name,
        **OmegaConf.to_container(OmegaConf.structured(options)),
    }
    return OmegaConf.create(full)


# Config groups a resumed run may change: they decide where results are logged, not what they are.
RESUMABLE_CHANGES = ("tracker",)


def _flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: node}


def check_resume_config(run_dir: Path, cfg: DictConfig) -> None:
    """A run folder that already holds checkpoints resumes only with the config it was started with: a changed
    setting would silently mix two runs in one folder (e.g. a resumed `experiment.rounds=2` run given no
    `rounds` would stop after round 1). Raises `ConfigError` naming each changed key and both values."""
    from oversight.training.checkpoint import latest_checkpoint_step

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or latest_checkpoint_step(run_dir / "checkpoints") is None:
        return
    saved = _flatten(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
    now = _flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [
        f"{key}: {saved.get(key, '(absent)')!r} in the folder, {now.get(key, '(absent)')!r} now"
        for key in sorted(saved.keys() | now.keys())
        if key.split(".")[0] not in RESUMABLE_CHANGES and saved.get(key) != now.get(key)
    ]
    if changed:
        raise ConfigError(
            f"{run_dir} holds checkpoints of a run with another config; resume it with the same settings or "
            "choose another hydra.run.dir. Changed: " + "; ".join(changed)
        )


def run_from_config(cfg: DictConfig, run_dir: Path, *, group: str | None = None) -> None:
    """Run one job: validate, record the config and provenance, open the tracker, run, finish cleanly."""
    import jax

    from oversight.parallel import initialize_distributed, make_mesh
    from oversight.tracking import open_tracker, write_run_info
    from oversight.training.checkpoint import latest_checkpoint_step

    typed, experiment, options = validate(cfg)
    cfg = with_every_option(cfg, options)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO
    initialize_distributed(typed.mesh)
    check_resume_config(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir, typed.seed)
    tracker = open_tracker(
        typed.tracker,
        run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        name=run_dir.name,
        group=group or experiment.name,
        job_type=experiment.name,
        tags=[experiment.name, *typed.tracker.tags],
        resume_step=latest_checkpoint_step(run_dir / "checkpoints"),
    )
    try:
        experiment.run(RunContext(typed, options, run_dir, tracker, make_mesh(typed.mesh)))
    finally:
        tracker.finish()
        jax.clear_caches()  # multirun jobs share the process: leave no compiled programs for the next


def _hydra_job(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    group = f"{cfg.experiment.name}/{Path(hc.sweep.dir).name}" if multirun else None
    try:
        run_from_config(cfg, Path(hc.runtime.output_dir), group=group)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    from oversight.report import run_digest

    digest = run_digest(
        Path(hc.runtime.output_dir),
        description=get_experiment(cfg.experiment.name).description,
        choices=dict(hc.runtime.choices),
    )
    if digest:
        print(digest, flush=True)


def report_command(argv: list[str]) -> None:
    """`oversight report FOLDER... [--output FILE]`: Markdown results tables over seeds (oversight/report.py)."""
    import argparse

    from oversight.report import report

    parser = argparse.ArgumentParser(
        prog="oversight report",
        description="Markdown results tables, one per experiment and setting, over the seeds of the run "
        "folders (config.yaml + results.jsonl) found at or below the given folders.",
    )
    parser.add_argument("folders", nargs="+", help="run or sweep folders, searched recursively")
    parser.add_argument("--output", "-o", help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    output = ["--output", args.output] if args.output else []
    command = " ".join(["oversight", "report", *args.folders, *output])
    try:
        text = report(args.folders, command=command)
    except FileNotFoundError as e:
        sys.exit(f"oversight report: {e}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: one malloc arena, no unmapping, no trimming. True if applied.

    XLA on CPU frees its large step buffers after every step and allocates them again in the next. With glibc's
    defaults its worker threads' arenas hand buffers over 64 MB back to the kernel, and every step faults them
    in again (`small` SFT step: 686k page faults, 1 s of system time in 3.2 s; 2.7 s with this; the default
    `gdc_gap` run 138 s -> 96 s). Costs: the process keeps its peak heap, and sampling runs 9-29% slower
    (threads share one arena). Skipped off glibc, or when the user sets any MALLOC_* variable themselves.
    Must run before JAX starts its threads (arenas are made per thread on first use)."""
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # <malloc.h>
    settings = ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def main() -> None:
    if sys.argv[1:2] == ["report"]:  # before Hydra, which would take `report` for an override
        report_command(sys.argv[2:])
        return
    keep_freed_memory()
    code_version()  # the commit this process runs, read before any job (a sweep's jobs all run this code)
    if "--list-experiments" in sys.argv[1:]:
        for name, exp in sorted(available_experiments().items()):
            print(f"{name:20s} {exp.description}")
        return
    register_configs()
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_hydra_job)()


if __name__ == "__main__":
    main()
