"""The configuration schema: one dataclass per layer, composed here and registered with Hydra.

YAML files under `conf/` are validated against these dataclasses, so a misspelt key or a wrong type fails at
compose time with the key's full name. Experiment options (`experiment.*`) are validated against the
plugin's own dataclass when the run starts (see `oversight.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from oversight.models.config import KERNEL_PATHS, ModelConfig
from oversight.parallel.mesh import MeshConfig
from oversight.settings import setting
from oversight.tracking import TrackerConfig
from oversight.training.loop import TrainConfig


@dataclass
class TaskConfig:
    # Built-in task name (`oversight.tasks.available_tasks()`).
    name: str = "arithmetic"
    # Difficulty knob (steps, digits, items, function length… depending on the task).
    difficulty: int = setting(1, ge=1)
    # Problems sampled for training.
    num_train: int = setting(2000, ge=1)
    # Held-out problems for evaluation (sampled with a different seed; prompts seen in training removed).
    num_eval: int = setting(128, ge=1)
    # Task-specific constructor options (see docs/tasks.md).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    # `name` picks the registered experiment; the other keys are its options, checked against its schema.
    experiment: dict[str, Any] = field(default_factory=lambda: {"name": MISSING})
    # Seed of everything random in the run (data, initialisation, sampling).
    seed: int = setting(0, ge=0)
    # "char" (built-in character tokenizer), a Hugging Face tokenizer folder, a GGUF file or a known model name.
    tokenizer: str = "char"
    # The transformer's float path: "auto" (the CPU kernels on the CPU backend, plain JAX elsewhere), or "cpu"
    # / "plain" to force one. Both compute the same function and round differently; re-running a result's
    # seeds on the other path shows whether it survives rounding (oversight/models/kernels.py).
    kernels: str = setting("auto", choices=KERNEL_PATHS)


def register_configs() -> None:
    schema = OmegaConf.structured(Config)
    # Experiment options are checked against the chosen experiment's own dataclass when the run starts
    # (`oversight.cli.validate`, before any work), so every option can be set on the command line
    # (`experiment.ppo.kl_coef=0.05`), not only those the experiment's YAML happens to name.
    OmegaConf.set_struct(schema.experiment, False)
    ConfigStore.instance().store(name="base_config", node=schema)
