"""What a run needs on record to be reproduced: seed, code version, package versions, machine."""

from __future__ import annotations

import functools
import json
import platform
import socket
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from oversight.tracking.jsonl import write_json_atomic

RUN_INFO_FILE = "run_info.json"
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "transformers",
    "numpy",
    "hydra-core",
    "wandb",
)
# The git commit recorded is that of the checkout holding this package, whatever the working directory.
CODE_DIR = Path(__file__).resolve().parent


def process_index() -> int:
    """This host's index in a multi-host job; 0 where JAX is not installed."""
    try:
        import jax
    except ImportError:
        return 0
    return jax.process_index()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=CODE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _jax_info() -> dict[str, Any]:
    try:
        import jax

        return {
            "backend": jax.default_backend(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(),
        }
    except (ImportError, RuntimeError):
        return {"backend": None, "device_count": None, "local_device_count": None, "process_count": None}


@functools.cache
def code_version() -> tuple[str | None, bool | None]:
    """(git commit, dirty) of the checkout, read once per process: the jobs of a sweep run the code the process
    imported at its start, whatever is committed while they run."""
    commit = _git("rev-parse", "HEAD")
    # Dirty as in `git describe --dirty`: tracked files changed; untracked ones (run outputs) don't count.
    status = _git("status", "--porcelain", "--untracked-files=no") if commit is not None else None
    return commit, None if status is None else bool(status)


def write_run_info(run_dir: Path, seed: int) -> dict[str, Any]:
    """Writes `run_dir/run_info.json` and returns its contents (also handy as W&B config)."""
    commit, dirty = code_version()
    info = {
        "seed": seed,
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": {name: _package_version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "jax": _jax_info(),
        "command": sys.argv,
        "start_time_utc": datetime.now(UTC).isoformat(),
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info
