"""Experiment plugins: a module dropped into `experiments/` is found without a reinstall; clashes are errors."""

import sys
import textwrap

import pytest

from oversight import experiments
from oversight.registry import available_experiments, get_experiment

TOY = """
from dataclasses import dataclass

from oversight.registry import Experiment


@dataclass
class ToyOptions:
    # How many coins the toy protocol flips.
    flips: int = 3


def run(ctx):
    ctx.results.add({"metric": "toy/flips", "value": ctx.options.flips})


EXPERIMENT = Experiment(name="{name}", description="a toy protocol", options=ToyOptions, run=run)
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on the `experiments` package's path, as a new file in experiments/ would be."""
    monkeypatch.setattr(experiments, "__path__", [*experiments.__path__, str(tmp_path)])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("oversight.experiments.toy")]:
        del sys.modules[name]


def test_a_new_module_in_experiments_is_registered_without_a_reinstall(plugin_dir):
    assert "toy_protocol" not in available_experiments()
    (plugin_dir / "toy_protocol.py").write_text(textwrap.dedent(TOY.replace("{name}", "toy_protocol")))
    exp = get_experiment("toy_protocol")
    assert exp.description == "a toy protocol" and exp.options().flips == 3
    assert {"sft", "rlhf", "toy_protocol"} <= set(available_experiments())


def test_two_experiments_with_one_name_are_an_error(plugin_dir):
    (plugin_dir / "toy_clash.py").write_text(textwrap.dedent(TOY.replace("{name}", "sft")))
    with pytest.raises(ValueError, match="two experiments are named 'sft'"):
        available_experiments()


def test_a_broken_plugin_names_its_module(plugin_dir):
    (plugin_dir / "toy_broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(ImportError, match="oversight.experiments.toy_broken"):
        available_experiments()
