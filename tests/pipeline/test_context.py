"""The run context: the step ledger lines stages up, named random streams are independent of each other and of
the order stages run in, the results table carries the run's columns."""

import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from oversight.pipeline import Results, RunContext, StepLedger, stable_seed
from oversight.pipeline.context import peak_rss_mib


class Recorder:
    def __init__(self):
        self.logged, self.tables, self.summaries = [], {}, {}

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def table(self, name, rows):
        self.tables[name] = rows

    def summary(self, values):
        self.summaries |= values


def _ctx(seed=0, tracker=None) -> RunContext:
    cfg = SimpleNamespace(seed=seed, task=SimpleNamespace(name="arithmetic", difficulty=2))
    return RunContext(cfg, None, Path("/tmp/run"), tracker or Recorder(), mesh=None)


def test_each_stage_gets_the_next_range_of_global_steps():
    ledger = StepLedger()
    assert ledger.declare("sft", 500) == 0
    assert ledger.declare("rm", 150) == 500
    assert ledger.declare("ppo", 30) == 650
    assert ledger.declare("rm", 150) == 500  # declared again (a restored stage): the same range
    assert ledger.declare("rm_2", 150) == 680  # after every stage declared before it
    with pytest.raises(ValueError, match="'rm' declared with 10 steps, earlier with 150"):
        ledger.declare("rm", 10)
    with pytest.raises(ValueError, match="steps=-1"):
        ledger.declare("judge", -1)


def test_a_stage_has_its_own_checkpoint_folder_and_dashboard_section():
    tracker = Recorder()
    ctx = _ctx(tracker=tracker)
    ctx.stage("sft", 20)
    stage = ctx.stage("rm/L1_H", 10, prefix="rm_L1_H")
    assert stage.offset == 20 and stage.checkpoint_dir == Path("/tmp/run/checkpoints/rm/L1_H")
    stage.tracker.log({"train/loss": 1.0, "eval/x": 2.0}, step=21)
    assert tracker.logged == [(21, {"rm_L1_H/loss": 1.0, "eval/x": 2.0})]
    assert ctx.stage("ppo", 4).tracker.prefixes == {"train/": "ppo/"}


def test_named_streams_depend_on_the_run_seed_and_the_name_only():
    a, b = _ctx(seed=0), _ctx(seed=1)
    assert a.seed("ppo/prompts") == _ctx(seed=0).seed("ppo/prompts") == stable_seed(0, "ppo/prompts")
    assert a.seed("ppo/prompts") != a.seed("ppo/rollouts")
    assert a.seed("ppo/prompts") != b.seed("ppo/prompts")
    a.stage("sft", 10)  # declaring stages draws nothing from any stream
    assert a.seed("ppo/prompts") == stable_seed(0, "ppo/prompts")
    # crc32 of "0/ppo/prompts": the same in every process (Python's str hash is salted per process)
    assert stable_seed(0, "ppo/prompts") == zlib.crc32(b"0/ppo/prompts")


def test_results_rows_carry_the_run_columns_unless_a_row_sets_them():
    tracker = Recorder()
    results = Results({"task": "arithmetic", "difficulty": 2})
    results.add(
        {"metric": "sft/gold_accuracy", "value": 0.5},
        {"metric": "rm/accuracy_gold", "value": 0.8, "difficulty": 4},
    )
    results.add({"metric": "rm/accuracy_gold", "value": 0.9, "round": 2})
    assert results.rows[0] == {
        "metric": "sft/gold_accuracy",
        "value": 0.5,
        "task": "arithmetic",
        "difficulty": 2,
    }
    assert results.rows[1]["difficulty"] == 4
    assert results.value("rm/accuracy_gold")["value"] == 0.9
    assert results.value("rm/accuracy_gold", difficulty=4)["value"] == 0.8
    with pytest.raises(KeyError, match="ppo/gold_reward"):
        results.value("ppo/gold_reward")
    summary = results.write(tracker, ("rm",))
    assert summary == {"rm/accuracy_gold": 0.9} and tracker.summaries == summary
    assert tracker.tables["results"] == results.rows


def test_a_finished_stage_records_its_wall_time_and_the_peak_memory_so_far_in_the_summary():
    tracker = Recorder()
    ctx = _ctx(tracker=tracker)
    stage = ctx.stage("rm/L1_H", 10, prefix="rm_L1_H")
    time.sleep(0.05)
    stage.finish()
    peak = tracker.summaries["rm_L1_H/peak_rss_mib"]
    assert set(tracker.summaries) == {"rm_L1_H/peak_rss_mib", "rm_L1_H/wall_s"}
    assert 0.05 <= tracker.summaries["rm_L1_H/wall_s"] < 5
    assert (
        peak == pytest.approx(peak_rss_mib(), rel=0.5) and 10 < peak < 2**20
    )  # MiB: more than a bare interpreter
    ctx.stage("ppo", 4).finish()
    assert tracker.summaries["ppo/peak_rss_mib"] >= peak  # a peak never falls


def test_the_model_a_run_builds_is_recorded_with_its_parameter_count(tmp_path):
    """For a checkpoint the summary holds its architecture, not the settings config.yaml shows."""
    import json

    from oversight.data.tokenizer import CharTokenizer
    from oversight.models import ModelConfig

    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128,
              "max_position_embeddings": 64, "tie_word_embeddings": True}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    tracker = Recorder()
    ctx = _ctx(tracker=tracker)
    ctx.__dict__["tokenizer"] = CharTokenizer()  # the cached property, without a config to build it from
    built = ctx.model_config(ModelConfig(checkpoint=str(tmp_path), d_model=128, n_layers=2), role="policy")
    s = tracker.summaries
    assert (s["policy/family"], s["policy/n_layers"], s["policy/d_model"], s["policy/kv_heads"]) == (
        "llama",
        3,
        64,
        2,
    )
    # embeddings 128*64 + 3 blocks of (attention 64*16*(4+2*2) + 4*16*64, MLP 3*64*96, two norms) + final norm
    assert (
        s["policy/num_params"]
        == built.num_params()
        == 128 * 64 + 3 * (64 * 16 * 8 + 64 * 64 + 3 * 64 * 96 + 128) + 64
    )
    assert s["policy/checkpoint"] == str(tmp_path)
