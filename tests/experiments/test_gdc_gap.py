"""GDC measurements on cases with known answers, the critique model's training data and read-outs, and the
`gdc_gap` experiment end to end on a tiny config."""

import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import roc_auc_score

from oversight.data.tokenizer import CharTokenizer
from oversight.experiments.critique import (
    HEADS,
    NO,
    YES,
    CritiqueModel,
    invalid_critique,
    training_examples,
)
from oversight.experiments.gdc_gap import (
    ResponseJudgements,
    discrimination_critique_rows,
    per_flaw_type_rows,
    selection_rows,
)
from oversight.models import ModelConfig, Transformer
from oversight.stats import auroc, bootstrap_row, wilson_interval
from oversight.tasks import get_task


def _by_metric(rows):
    return {(r["metric"], r.get("flaw_type", "all")): r for r in rows}


# ----------------------------------------------------------------------------------------------------------
# Metrics on a case worked out by hand

# 4 flawed responses then 4 clean ones; what a fixed discriminator and a fixed critique writer said.
CASE = ResponseJudgements(
    flawed=np.array([1, 1, 1, 1, 0, 0, 0, 0], bool),
    flaw_type=np.array(["a", "a", "b", "b", "", "", "", ""]),
    p_flawed=np.array([0.9, 0.8, 0.6, 0.3, 0.1, 0.2, 0.7, 0.4]),
    # critique 0 is right; 1 points at the flaw with a wrong correction; 2 points at a fine unit;
    # 3 says "no flaw" on a flawed response; 5 invents a flaw on a clean one
    claims_flaw=np.array([1, 1, 1, 0, 0, 1, 0, 0], bool),
    real_flaw=np.array([1, 1, 0, 0, 0, 0, 0, 0], bool),
    names_injected=np.array([1, 1, 0, 0, 0, 0, 0, 0], bool),
    valid=np.array([1, 0, 0, 0, 1, 0, 1, 1], bool),
)


def test_d_c_and_dc_gap_on_a_known_case():
    rows = _by_metric(discrimination_critique_rows(CASE))
    # D: flawed scored > 1/2 at 0, 1, 2; clean scored <= 1/2 at 4, 5, 7 -> 6 of 8
    assert rows["D/accuracy", "all"]["value"] == 0.75
    # AUROC: positive-above-negative pairs 4 + 4 + 3 + 2 = 13 of 16
    assert rows["D/auroc", "all"]["value"] == pytest.approx(13 / 16)
    # C: right on flawed 0 only; right on clean 4, 6, 7 -> 4 of 8
    assert rows["C/accuracy", "all"]["value"] == 0.5
    assert rows["C/inclusion", "all"]["value"] == 0.5  # 0 and 1 point at the injected flaw
    assert rows["C/hallucinated", "all"]["value"] == 0.5  # 2 and 5 of the 4 flaw claims
    assert rows["C/false_alarm", "all"]["value"] == 0.25  # 5 of the 4 clean responses
    assert rows["gap/DC", "all"]["value"] == pytest.approx(0.25)
    lo, hi = wilson_interval(6, 8)
    assert (rows["D/accuracy", "all"]["ci_low"], rows["D/accuracy", "all"]["ci_high"]) == (lo, hi)
    for r in rows.values():
        assert r["ci_low"] <= r["value"] <= r["ci_high"], r

    per_type = _by_metric(per_flaw_type_rows(CASE))
    assert per_type["D/recall", "a"]["value"] == 1.0 and per_type["D/recall", "b"]["value"] == 0.5
    assert per_type["C/recall", "a"]["value"] == 0.5 and per_type["C/recall", "b"]["value"] == 0.0
    assert per_type["C/recall", "b"]["n"] == 2


def test_selection_by_d_and_by_c_on_a_known_case():
    correct = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    p_flawed = np.array([[0.2, 0.5, 0.9], [0.3, 0.3, 0.1], [0.4, 0.4, 0.6]])
    passes = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], bool)
    samples = [["7", "8", "7"], ["8", "9", "9"], ["1", "2", "3"]]
    rows = _by_metric(selection_rows(samples, correct, p_flawed, passes))
    # D picks samples 0, 2, 0 (ties to the first) -> 0, 0, 0; C picks 1, 0 (none passes), 0 -> 1, 1, 0
    # at chance: distinct samples {7, 8} -> 1/2, {8, 9} -> 1/2, {1, 2, 3} -> 0; the most frequent: 7, 9, 1 -> 0
    assert rows["G/accuracy", "all"]["value"] == pytest.approx(2 / 9)
    assert rows["G/best_of_n_by_D", "all"]["value"] == 0.0
    assert rows["G/best_of_n_by_C", "all"]["value"] == pytest.approx(2 / 3)
    assert rows["G/best_of_n_oracle", "all"]["value"] == pytest.approx(2 / 3)
    assert rows["gap/GD", "all"]["value"] == pytest.approx(-2 / 9)
    assert rows["gap/GC", "all"]["value"] == pytest.approx(4 / 9)
    assert rows["G/best_of_n_at_chance", "all"]["value"] == pytest.approx(1 / 3)
    assert rows["G/most_frequent", "all"]["value"] == 0.0
    assert rows["gap/GD_over_chance", "all"]["value"] == pytest.approx(-1 / 3)
    assert all(r["n"] == 3 and r["N"] == 3 for r in rows.values())


def test_auroc_against_pairwise_counting():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert auroc(scores, labels) == pytest.approx(expected)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))  # scikit-learn's
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert np.isnan(auroc(np.array([0.3, 0.4]), np.array([True, True])))


def test_interval_code_against_published_and_degenerate_cases():
    # Newcombe (1998), Table I, Wilson score intervals
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    # a paired difference that is the same on every row has a zero-width bootstrap interval
    pairs = np.stack([np.ones(50), np.zeros(50)], axis=1)
    row = bootstrap_row("gap", pairs, lambda x: x[:, 0].mean() - x[:, 1].mean())
    assert (row["value"], row["ci_low"], row["ci_high"], row["n"]) == (1.0, 1.0, 1.0, 50)
    # and a mean of noisy data gets an interval around it of about 2 standard errors each side
    data = np.random.default_rng(1).normal(size=400)
    row = bootstrap_row("mean", data, np.mean)
    half = (row["ci_high"] - row["ci_low"]) / 2
    assert half == pytest.approx(1.96 * data.std() / np.sqrt(400), rel=0.15)


# ----------------------------------------------------------------------------------------------------------
# The critique model's training data


@pytest.mark.parametrize("name,difficulty", [("addition", 2), ("arithmetic", 2), ("sorting", 4), ("sat", 2)])
def test_training_examples_carry_gold_labels(name, difficulty):
    task = get_task(name)
    problems = task.sample(40, difficulty, seed=3)
    examples = training_examples(task, problems, seed=0)
    by_head = {"answer": [], "discriminate": [], "critique": [], "helpful": [], "refine": []}
    for context, target in examples:
        head = (
            "helpful"
            if context.endswith("helpful? ")
            else "refine"
            if context.endswith("refined: ")
            else "critique"
            if context.endswith("critique: ")
            else "discriminate"
            if context.endswith("flawed? ")
            else "answer"
        )
        by_head[head].append((context, target))
    assert len(by_head["answer"]) == len(by_head["discriminate"]) == len(by_head["critique"]) == 40
    assert len(by_head["refine"]) == 20  # the flawed half
    for (context, label), (_, critique) in zip(by_head["discriminate"], by_head["critique"], strict=True):
        problem = next(p for p in problems if context.startswith(p.prompt))
        response = context[len(problem.prompt) : -len("\nflawed? ")]
        # the discriminator label is gold's, and the cloned critique is gold-valid for that response
        assert label == (NO if task.check(problem, response).correct else YES)
        assert task.check_critique(problem, response, critique).valid
    labels = [t for _, t in by_head["helpful"]]
    assert set(labels) == {YES, NO}
    for context, label in by_head["helpful"]:
        problem = next(p for p in problems if context.startswith(p.prompt))
        rest = context[len(problem.prompt) : -len("\nhelpful? ")]
        response, critique = rest.split("\ncritique: ")
        assert label == (YES if task.check_critique(problem, response, critique).valid else NO)
    for context, target in by_head["refine"]:
        assert task.check(next(p for p in problems if context.startswith(p.prompt)), target).correct
    with pytest.raises(ValueError, match="unknown critique-model heads"):
        training_examples(task, problems, seed=0, heads=("answer", "critic"))
    assert set(HEADS) == set(by_head)


@pytest.mark.parametrize("name,difficulty", [("addition", 3), ("arithmetic", 3), ("sorting", 5), ("sat", 3)])
def test_invalid_critiques_are_rejected_by_gold(name, difficulty):
    task = get_task(name)
    rng = random.Random(0)
    items = task.labelled_responses(task.sample(60, difficulty, seed=5), seed=1)
    for item in items:
        for _ in range(3):
            critique = invalid_critique(task, item, rng)
            assert task.parse_critique(critique) is not None
            assert not task.check_critique(item.problem, item.response, critique).valid, (item, critique)


# ----------------------------------------------------------------------------------------------------------
# Read-outs of the yes/no heads


def test_yes_probability_is_unaffected_by_batching_and_padding():
    tok = CharTokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=128)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    cm = CritiqueModel(model, tok, max_new_tokens=8)
    contexts = ["12+34=46\nflawed? ", "1+1=3\nflawed? ", "sort: b a\na b\nflawed? " * 2]
    batched = cm.yes_probability(contexts)
    y, n = tok.encode(YES)[0], tok.encode(NO)[0]
    for context, p in zip(contexts, batched, strict=True):
        ids = jnp.asarray([[tok.bos_id, *tok.encode(context)]])
        mask = jnp.ones_like(ids)
        hidden, _ = model(ids, jnp.arange(ids.shape[1])[None], mask)
        logits = model.logits(hidden)[0, -1]
        expected = jax.nn.softmax(jnp.stack([logits[y], logits[n]]))[0]
        assert p == pytest.approx(float(expected), abs=1e-5)


# ----------------------------------------------------------------------------------------------------------
# End to end


def test_gdc_gap_end_to_end_writes_every_metric_with_intervals(critique_runs):
    run_dir = critique_runs / "gdc"
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    metrics = {r["metric"] for r in rows}
    expected = {"D/accuracy", "D/auroc", "C/accuracy", "C/inclusion", "C/false_alarm", "gap/DC", "G/accuracy"}
    expected |= {
        "G/best_of_n_by_D",
        "G/best_of_n_by_C",
        "gap/GD",
        "gap/GC",
        "H/accuracy",
        "R/refined_correct",
    }
    assert expected <= metrics
    assert {"D/recall", "C/recall"} <= metrics  # per flaw type
    for r in rows:
        assert r["task"] == "addition" and r["params"] > 0
        # only the hallucination rate can be empty (no critique claimed a flaw); it is then null, not 0
        assert r["n"] > 0 or (r["metric"] == "C/hallucinated" and r["value"] is None), r
        if r["value"] is not None:
            assert r["ci_low"] <= r["value"] <= r["ci_high"], r
    by = {r["metric"]: r for r in rows if r.get("flaw_type", "all") == "all"}
    assert by["D/accuracy"]["n"] == 32 and by["C/inclusion"]["n"] == 16
    assert by["gap/DC"]["value"] == pytest.approx(by["D/accuracy"]["value"] - by["C/accuracy"]["value"])
