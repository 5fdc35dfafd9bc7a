"""Test-wide setup. XLA flags must be set before JAX first initialises its backend, so this runs first."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# Eight CPU devices, to test sharding on a laptop or CI machine.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def bench_script():
    """`bench_script("run")`: a script of bench/ (not a package) loaded as a module, once per session."""
    root = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str):
        module_name = f"bench_{name}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
        return sys.modules[module_name]

    return load
