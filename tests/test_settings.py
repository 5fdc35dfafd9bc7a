"""Declared settings: every numeric setting of every config schema has a range, checked at, below and above
its bounds; bad values and unknown keys fail before any work with the full key named."""

import dataclasses
import typing

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from oversight.cli import CONF_DIR, ConfigError, options_schema, validate
from oversight.config import Config, register_configs
from oversight.registry import available_experiments
from oversight.settings import SettingError, check_fields, check_known_keys, describe, violation

# Numeric settings without a range, and why.
UNBOUNDED: dict[str, str] = {}


def _schemas() -> dict[str, type]:
    """Every config dataclass reachable from the run config and each experiment's options, by a path."""
    roots = {"": Config, **{f"experiment[{n}].": e.options for n, e in available_experiments().items()}}
    found: dict[str, type] = {}

    def walk(cls: type, path: str) -> None:
        found[path] = cls
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{path}{f.name}.")

    for path, cls in roots.items():
        walk(cls, path)
    return found


def _numeric_fields() -> list[tuple[str, type, dataclasses.Field, bool]]:
    """(key, its dataclass, its field, whether it is an integer) of every int or float setting."""
    out = []
    for path, cls in _schemas().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            if args & {int, float} and bool not in args:
                out.append((f"{path}{f.name}", cls, f, float not in args))
    return out


NUMERIC = _numeric_fields()


def test_every_numeric_setting_declares_its_range():
    missing = [key for key, _, f, _ in NUMERIC if not describe(f) and key not in UNBOUNDED]
    assert not missing, f"numeric settings without a declared range: {missing}"
    assert len(NUMERIC) > 100  # the walk found the schemas (core and every experiment's options)


BOUNDED = [n for n in NUMERIC if describe(n[2])]


@pytest.mark.parametrize("key,cls,f,integer", BOUNDED, ids=[n[0] for n in BOUNDED])
def test_a_value_below_at_and_above_each_bound(key, cls, f, integer):
    node = options_schema(cls)
    name = key.rsplit(".", 1)[-1]
    is_list = f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), list)
    for bound, inclusive, side in (("ge", True, -1), ("gt", False, -1), ("le", True, 1), ("lt", False, 1)):
        if bound not in f.metadata:
            continue
        b = f.metadata[bound]
        step = 1 if integer else 1e-3
        outside, inside = b + side * step, b - side * step
        for value, ok in ((outside, False), (b, inclusive), (inside, True)):
            if (violation(f, value) is None) != ok:
                pytest.fail(f"{key}={value} should be {'accepted' if ok else 'refused'} ({describe(f)})")
            setattr(node, name, [value] if is_list else value)
            if ok and all(violation(g, getattr(node, g.name)) is None for g in dataclasses.fields(cls)):
                check_fields(node)
            elif not ok:
                with pytest.raises(SettingError, match=rf"^x\.{name}=.+ (must be|each element must be)"):
                    check_fields(node, "x.")


def test_choices_and_unknown_keys_name_the_key_and_the_closest_one():
    schema = OmegaConf.structured(Config)
    with pytest.raises(
        SettingError, match=r"^train.stpes is not a setting of TrainConfig; did you mean train.steps\?"
    ):
        check_known_keys({"train": {"stpes": 10}}, schema)
    check_known_keys(
        {"train": {"steps": 10}, "task": {"options": {"anything": 1}}}, schema
    )  # free-form options
    node = OmegaConf.structured(Config)
    node.model.family = "gpt3"
    with pytest.raises(SettingError, match=r"^model.family='gpt3' is not one of gpt2, llama$"):
        check_fields(node)


ISSUE_EXAMPLES = [
    ("sft", "train.batch_size=0", "train.batch_size=0 must be >= 1"),
    ("sft", "train.steps=-5", "train.steps=-5 must be >= 0"),
    ("sft", "train.log_every=0", "train.log_every=0 must be >= 1"),
    ("sft", "train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1"),
    ("sft", "train.keep_checkpoints=0", "train.keep_checkpoints=0 must be >= 1"),
    ("sft", "model.n_layers=0", "model.n_layers=0 must be >= 1"),
    ("sft", "+train.stpes=10", "train.stpes is not a setting of TrainConfig; did you mean train.steps?"),
    (
        "rlhf",
        "experiment.ppo.kl_coeff=0.1",
        "experiment.ppo.kl_coeff is not a setting of PPOConfig; did you mean",
    ),
    (
        "rlhf",
        "experiment.reward_model.train.batch_size=-2",
        "experiment.reward_model.train.batch_size=-2 must be",
    ),
    ("debate_text", "experiment.judge.model.n_heads=0", "experiment.judge.model.n_heads=0 must be >= 1"),
]


@pytest.mark.parametrize("experiment,override,message", ISSUE_EXAMPLES)
def test_bad_settings_fail_at_validation_with_the_full_key(experiment, override, message):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message)
