"""The `oversight` command: Hydra over the experiment registry.

oversight experiment=sft seed=1 model=small       # one run, folder under runs/
oversight -m experiment=sft seed=0,1               # a sweep, folders under multirun/
oversight --list-experiments                       # what is installed
oversight report runs/results --output docs/results.md   # Markdown tables over seeds from run folders
oversight report runs/results/rlhf --update docs/results.md   # ... rewriting one experiment's section
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from oversight.config import Config, register_configs
from oversight.errors import ConfigError, UserError
from oversight.registry import Experiment, RunContext, available_experiments, get_experiment
from oversight.settings import SettingError, check_fields, check_known_keys
from oversight.tracking.run_info import code_version, process_index


def _conf_dir() -> str:
    """The Hydra configs: `oversight/conf` in an installed wheel, the checkout's top-level `conf/` otherwise
    (pyproject.toml maps the one onto the other)."""
    here = Path(__file__).resolve().parent
    return str(here / "conf" if (here / "conf" / "config.yaml").is_file() else here.parent / "conf")


CONF_DIR = _conf_dir()


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
    schema = options_schema(experiment.options)
    try:
        check_known_keys(OmegaConf.to_container(cfg), OmegaConf.structured(Config))
        check_known_keys(OmegaConf.to_container(OmegaConf.create(given)), schema, "experiment.")
    except SettingError as e:
        raise ConfigError(str(e)) from None
    try:
        options_node = OmegaConf.merge(schema, given)
        check_fields(options_node, "experiment.")
        options = OmegaConf.to_object(options_node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ConfigError(f"experiment.{key}: {e.msg if hasattr(e, 'msg') else e}") from None
    except ValueError as e:  # a declared range (SettingError) or an options class's own check
        raise ConfigError(str(e)) from None
    try:
        check_fields(cfg)
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


def run_from_config(
    cfg: DictConfig, run_dir: Path, *, group: str | None = None, records: dict[str, str] | None = None
) -> None:
    """Run one job: validate, record the config and provenance, open the tracker, run, finish cleanly.

    `records`: more files to write in the run folder ({relative path: text}, e.g. Hydra's `.hydra/` record
    of the job), written with the config only once the run is accepted: a refused resume changes nothing."""
    import jax

    from oversight.models.kernels import kernel_path
    from oversight.parallel import initialize_distributed, make_mesh
    from oversight.tracking import open_tracker, write_run_info
    from oversight.training.checkpoint import latest_checkpoint_step

    typed, experiment, options = validate(cfg)
    cfg = with_every_option(cfg, options)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO
    # JAX logs at INFO each accelerator backend it could not start ("Unable to initialize backend 'tpu'"),
    # which on a CPU machine reads like an error before every run.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    initialize_distributed(typed.mesh)
    check_resume_config(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if process_index() == 0:  # on a multi-host job one process records the run (the others would race it)
        for name, text in (records or {}).items():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_text(text)
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
        with kernel_path(typed.kernels):
            experiment.run(RunContext(typed, options, run_dir, tracker, make_mesh(typed.mesh)))
    finally:
        tracker.finish()
        jax.clear_caches()  # multirun jobs share the process: leave no compiled programs for the next


def _hydra_job(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    group = f"{cfg.experiment.name}/{Path(hc.sweep.dir).name}" if multirun else None
    # What Hydra itself would write to `.hydra/` before the job (conf/config.yaml turns that off), written by
    # run_from_config once the run is accepted.
    records = {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hc.overrides.task),
    }
    try:
        run_from_config(cfg, Path(hc.runtime.output_dir), group=group, records=records)
    except UserError as e:
        _remove_if_unused(Path(hc.runtime.output_dir))
        if _show_tracebacks():
            raise
        sys.exit(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}")
    from oversight.report import run_digest

    digest = run_digest(
        Path(hc.runtime.output_dir),
        description=get_experiment(cfg.experiment.name).description,
        choices=dict(hc.runtime.choices),
    )
    if digest:
        print(digest, flush=True)


class SweepSummary(Callback):
    """At the end of a `-m` sweep: the mean and 95% interval over its seeds of every result (what
    `oversight report <sweep dir>` prints), so a sweep does not end on its last job's digest alone."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from oversight.report import report

        sweep_dir = config.hydra.sweep.dir
        try:
            text = report([sweep_dir])
        except (FileNotFoundError, ValueError) as e:  # no finished run wrote results
            print(f"sweep {sweep_dir}: no results to summarise ({e})")
            return
        print(f"\nSweep summary over seeds ({sweep_dir}):\n\n{text}", flush=True)


def _remove_if_unused(run_dir: Path) -> None:
    """A refused run in a folder Hydra has just made for it leaves nothing: the folder holds only Hydra's job
    log, empty (a folder with a run in it keeps everything)."""
    files = [p for p in run_dir.rglob("*") if p.is_file()] if run_dir.is_dir() else []
    if all(p.parent == run_dir and p.suffix == ".log" and p.stat().st_size == 0 for p in files):
        for p in files:
            p.unlink()
        run_dir.rmdir()


def _show_tracebacks() -> bool:
    """`--debug` on the command line or HYDRA_FULL_ERROR=1: user errors show their traceback too."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_command(argv: list[str]) -> None:
    """`oversight report FOLDER... [--output FILE | --update FILE]`: Markdown results tables over seeds
    (oversight/report.py)."""
    import argparse

    from oversight.report import merge, report

    parser = argparse.ArgumentParser(
        prog="oversight report",
        description="Markdown results tables, one per experiment and setting, over the seeds of the run "
        "folders (config.yaml + results.jsonl) found at or below the given folders.",
    )
    parser.add_argument("folders", nargs="+", help="run or sweep folders, searched recursively")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--output", "-o", help="write the Markdown here instead of printing it")
    target.add_argument(
        "--update", help="rewrite only the sections of the experiments found in this results file"
    )
    args = parser.parse_args(argv)
    path = args.output or args.update
    try:
        text = report(args.folders, output=path)
    except FileNotFoundError as e:
        sys.exit(f"oversight report: {e}")
    if path is None:
        print(text, end="")
        return
    if args.update and Path(path).is_file():
        text = merge(Path(path).read_text(), text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    print(f"wrote {path}")


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


def version_line() -> str:
    """`oversight 0.1.0 (commit 5887dff, dirty) jax 0.8.1 flax 0.12.0`."""
    from importlib import metadata

    import oversight

    commit, dirty = code_version()
    where = f"commit {commit[:7]}{', dirty' if dirty else ''}" if commit else "not a git checkout"
    libs = " ".join(
        f"{name} {metadata.version(name)}" for name in ("jax", "flax", "optax", "orbax-checkpoint")
    )
    return f"oversight {oversight.__version__} ({where}) {libs}"


USAGE = """oversight: scalable-oversight experiments on JAX/Flax.

  oversight experiment=NAME [key=value ...]       one run (folder under runs/)
  oversight -m experiment=NAME seed=0,1,2         a sweep over every combination (folders under multirun/)
  oversight report FOLDER... [-o|--update FILE]   Markdown results tables over seeds, from run folders
  oversight --list-experiments | --version        what is installed, and which code
  oversight --help [experiment=NAME key=value]    this help, with NAME's options and the values given
  --debug                                         keep the traceback of a user error (HYDRA_FULL_ERROR=1)
  --hydra-help                                    Hydra's own options (launchers, sweepers, -cfg job)
"""


def help_text(overrides: list[str]) -> str:
    """Usage, the experiments, the config groups and every setting: its value with `overrides` applied, its
    valid values and what it is (from the comment above the field in its dataclass)."""
    from hydra import compose, initialize_config_dir

    from oversight.settings import setting_rows

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    name = cfg.experiment.name
    options = OmegaConf.merge(
        options_schema(get_experiment(name).options),
        {k: v for k, v in cfg.experiment.items() if k != "name"},
    )
    groups = {
        g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
        for g in ("experiment", "model", "task", "train", "mesh", "tracker")
    }
    lines = [USAGE, "Experiments:"]
    lines += [f"  {n:18s} {e.description}" for n, e in sorted(available_experiments().items())]
    lines += ["", "Config groups (group=option; the experiment's YAML may choose them):"]
    lines += [f"  {g:11s} {', '.join(opts)}" for g, opts in groups.items()]
    rows = setting_rows(cfg)
    rows = [r for r in rows if not r[0].startswith("experiment")] + setting_rows(options, "experiment.")
    lines += ["", f"Settings (key = value here [valid values]  what it is); experiment options of {name}:"]
    for key, value, valid, doc in rows:
        shown = "null" if value is None else value
        lines.append(f"  {key} = {shown}" + (f"  [{valid}]" if valid else "") + (f"  {doc}" if doc else ""))
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["report"]:  # before Hydra, which would take `report` for an override
        report_command(sys.argv[2:])
        return
    if "--debug" in sys.argv[1:]:  # ours, not Hydra's: user errors keep their traceback (and Hydra's)
        sys.argv.remove("--debug")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if "--hydra-help" in sys.argv[1:]:  # Hydra's own help, under the name Hydra gives it
        sys.argv[sys.argv.index("--hydra-help")] = "--help"
    elif "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print(help_text([a for a in sys.argv[1:] if a not in ("--help", "-h")]))
        return
    if sys.argv[1:2] == ["--version"]:  # before Hydra, whose own --version names Hydra's
        print(version_line())
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
