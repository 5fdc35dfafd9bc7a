"""Every shipped config composes and validates; mistakes fail with the offending key's name."""

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf.errors import OmegaConfBaseException

from oversight.cli import CONF_DIR, ConfigError, validate
from oversight.config import register_configs

GROUPS = ["model", "task", "train", "mesh", "tracker", "experiment"]
# Options a config needs from the command line (they are `???` in the file on purpose).
REQUIRED = {("model", "hf"): ["model.checkpoint=/some/hf/folder"]}


def _compose(overrides, conf_dir=CONF_DIR):
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


SHIPPED = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, name", SHIPPED, ids=[f"{g}={n}" for g, n in SHIPPED])
def test_every_shipped_config_composes_and_validates(group, name):
    cfg = _compose([f"{group}={name}", *REQUIRED.get((group, name), [])])
    typed, experiment, _ = validate(cfg)
    assert experiment.name == typed.experiment["name"]


def test_every_registered_task_has_a_config_that_samples_its_problems():
    from oversight.tasks import available_tasks, get_task

    configs = {p.stem: _compose([f"task={p.stem}"]).task for p in (Path(CONF_DIR) / "task").glob("*.yaml")}
    assert set(available_tasks()) <= {c.name for c in configs.values()}
    for name, c in configs.items():
        problems = get_task(c.name, **c.options).sample(3, c.difficulty, seed=0)
        assert len(problems) == 3, name


def test_every_experiment_model_file_names_a_shipped_experiment_and_model():
    # A misspelt file name would never be picked (the group is optional), so each must split into an
    # experiment and a model that exist, and be a global package like the experiment files it specialises.
    conf = Path(CONF_DIR)
    pairs = {
        f"{e.stem}_{m.stem}": (e.stem, m.stem)
        for e in (conf / "experiment").glob("*.yaml")
        for m in (conf / "model").glob("*.yaml")
    }
    files = sorted((conf / "experiment_model").glob("*.yaml"))
    assert files
    for path in files:
        assert path.stem in pairs, path
        assert path.read_text().startswith("# @package _global_"), path
        experiment, model = pairs[path.stem]
        typed, _, _ = validate(_compose([f"experiment={experiment}", f"model={model}"]))
        assert typed.experiment["name"] == experiment


def test_an_experiment_on_a_model_takes_that_pairs_settings_and_the_command_line_wins():
    tiny = _compose(["experiment=rlhf"])
    smol = _compose(["experiment=rlhf", "model=smollm2_135m"])
    assert tiny.experiment.reward_model.train.learning_rate == 3e-4  # conf/experiment/rlhf.yaml
    assert (
        smol.experiment.reward_model.train.learning_rate < 1e-4
    )  # conf/experiment_model/rlhf_smollm2_135m.yaml
    assert smol.train.learning_rate == 3e-5  # the model preset's own setting stays
    given = _compose(
        ["experiment=rlhf", "model=smollm2_135m", "experiment.reward_model.train.learning_rate=0.01"]
    )
    assert given.experiment.reward_model.train.learning_rate == 0.01
    validate(smol)


def test_experiment_files_are_global_packages():
    for path in (Path(CONF_DIR) / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path


def test_misspelt_key_names_the_key():
    with pytest.raises((ConfigCompositionException, HydraException)) as err:
        _compose(["model.d_modle=64"])
    assert "d_modle" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_names_the_key():
    with pytest.raises((ConfigCompositionException, HydraException)) as err:
        _compose(["train.steps=lots"])
    assert "train.steps" in str(err.value) + str(err.value.__cause__)


def test_misspelt_experiment_option_names_the_key():
    try:
        cfg = _compose(["+experiment.eval_sampels=3"])
    except (ConfigCompositionException, HydraException, OmegaConfBaseException) as e:
        assert "eval_sampels" in str(e) + str(e.__cause__)
        return
    with pytest.raises(ConfigError, match="experiment.eval_sampels"):
        validate(cfg)


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown experiment 'nope'; known experiments: .*sft"):
        validate(_compose(["experiment.name=nope"]))
    with pytest.raises((ConfigCompositionException, HydraException)) as err:
        _compose(["experiment=nope"])
    assert "sft" in str(err.value)


def test_bad_value_in_a_schema_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="family"):
        validate(_compose(["model.family=gpt5"]))
    with pytest.raises(ConfigError, match="wandb_mode"):
        validate(_compose(["tracker.wandb_mode=sometimes"]))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # derived widths follow the composed width and heads, not the schema's defaults
        (["model=bench_small"], {"kv_heads": 8, "head_width": 64, "mlp_width": 2048}),
        (["model=mini"], {"kv_heads": 2, "head_width": 32, "mlp_width": 256}),
        (["model.d_model=96", "model.n_heads=3"], {"kv_heads": 3, "head_width": 32, "mlp_width": 384}),
        # and set explicitly they stay as set
        (["model=llama_tiny"], {"kv_heads": 2, "head_width": 32, "mlp_width": 384}),
    ],
)
def test_derived_model_widths_follow_the_composed_config(overrides, expected):
    typed, _, _ = validate(_compose(overrides))
    assert {k: getattr(typed.model, k) for k in expected} == expected


def test_replacing_width_or_heads_derives_the_other_widths_again():
    import dataclasses

    from oversight.models import ModelConfig

    base = ModelConfig(d_model=128, n_heads=4)
    wider = dataclasses.replace(base, d_model=256, n_heads=8)
    # no grouped-query attention switched on by a stale key/value head count, no stale head or MLP width
    assert (wider.kv_heads, wider.head_width, wider.mlp_width) == (8, 32, 1024)
    gqa = dataclasses.replace(wider, n_kv_heads=2, d_ff=512)
    assert (gqa.kv_heads, gqa.head_width, gqa.mlp_width) == (2, 32, 512)
    assert dataclasses.replace(gqa, n_heads=16).kv_heads == 2  # set explicitly, it stays
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads=3"):
        dataclasses.replace(wider, n_kv_heads=3)


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a plain nested dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


EXPERIMENT_FILES = sorted((Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=[p.stem for p in EXPERIMENT_FILES])
def test_every_experiment_file_sets_only_what_differs_from_the_defaults(path, tmp_path):
    """One default per setting, in the dataclass (or the default group file): an experiment file that restates a
    default would keep a stale copy of it when the default changes."""
    from omegaconf import OmegaConf

    from oversight.cli import options_schema
    from oversight.registry import get_experiment

    raw = OmegaConf.to_container(OmegaConf.load(path))
    # The config every group's defaults give, with the groups the file itself picks (`override /task: x`).
    picked = [
        f"{group.removeprefix('override /')}={choice}"
        for entry in raw.pop("defaults", [])
        if isinstance(entry, dict)
        for group, choice in entry.items()
    ]
    # The config without any experiment file: the shipped one with an empty experiment file added.
    shutil.copytree(CONF_DIR, tmp_path / "conf")
    (tmp_path / "conf" / "experiment" / "none.yaml").write_text("# @package _global_\n")
    base = OmegaConf.to_container(_compose(["experiment=none", *picked], tmp_path / "conf"))
    experiment = raw.pop("experiment")
    options = OmegaConf.to_container(options_schema(get_experiment(experiment.pop("name")).options))
    restated = [
        f"experiment.{key}"
        for key, value in _leaves(experiment)
        if OmegaConf.select(OmegaConf.create(options), key) == value
    ] + [key for key, value in _leaves(raw) if OmegaConf.select(OmegaConf.create(base), key) == value]
    assert not restated, f"{path.name} restates defaults: {restated}"
