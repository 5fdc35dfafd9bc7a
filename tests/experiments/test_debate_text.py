"""The `debate_text` experiment: passages and questions, the quote policy and its RL update, what the judge
sees, a tiny CLI run, and a run with a tiny imported Hugging Face checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oversight
from oversight import protocols as P
from oversight.data.tokenizer import CharTokenizer, load_tokenizer
from oversight.experiments.debate import text as T
from oversight.models import ModelConfig, Transformer
from oversight.parallel import MeshConfig, make_mesh
from oversight.pipeline import Stage, StageTracker
from oversight.stats import wilson_interval
from oversight.tasks import passages
from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step

REPO = Path(oversight.__file__).resolve().parents[1]
OPTS = T.TextDebateOptions()


# ---------------------------------------------------------------------------------------------- data


def test_the_deciding_sentence_is_in_the_passage_and_verifies_and_the_lie_is_not():
    for q in passages.make_questions(300, OPTS.passages, seed=0):
        true, false = q.answers[q.correct], q.answers[1 - q.correct]
        sentences = passages.passage_sentences(q.source)
        assert len(sentences) == OPTS.entities * OPTS.relations
        proof = passages.claim_sentence(q.question, true)
        assert proof in sentences and P.verify_quote(proof, q.source)
        assert not P.verify_quote(passages.claim_sentence(q.question, false), q.source)  # a fabricated claim
        # The lie comes from a misleading sentence: same person or same relation, not both.
        entity, relation = q.question.split(" ", 1)[0], q.question.split(" ", 1)[1][: -len(" which city?")]
        misleading = [s for s in sentences if false in s.split()[-1]]
        assert misleading and all(P.verify_quote(s, q.source) for s in misleading)
        assert any((s.startswith(entity + " ")) != (relation in s) for s in misleading)


def test_a_blind_judge_cannot_beat_chance_by_construction():
    questions = passages.make_questions(4000, OPTS.passages, seed=1)
    # Answer positions are balanced.
    lo, hi = wilson_interval(sum(q.correct for q in questions), len(questions))
    assert lo < 0.5 < hi
    # True and false answers are exchangeable: a blind rule fitted on one half (prefer the city that was
    # true more often) is at chance on the other.
    fit, held = questions[:2000], questions[2000:]
    true_count = Counter(q.answers[q.correct] for q in fit)
    false_count = Counter(q.answers[1 - q.correct] for q in fit)
    score = {c: true_count[c] - false_count[c] for c in passages.CITIES}
    hits = sum(
        (score[q.answers[0]] >= score[q.answers[1]]) == (q.correct == 0) for q in held
    )  # the rule picks A on ties
    lo, hi = wilson_interval(hits, len(held))
    assert lo < 0.5 < hi
    # The learned judge is antisymmetric: with no quotes its logit is exactly 0 in both orders.
    judge = _tiny_judge()
    p = judge([P.JudgeView(q.question, q.answers, ()) for q in held[:8]])
    assert np.all(p == 0.5)


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="experiment.judge.kind='human'"):
        T.QuoteJudgeConfig(kind="human")
    with pytest.raises(ValueError, match="experiment.judge.retrain_mix=1.5 must be >= 0 and <= 1"):
        T.QuoteJudgeConfig(retrain_mix=1.5)
    with pytest.raises(ValueError, match="rl.epochs=0 must be >= 1"):
        T.PolicyGradientConfig(epochs=0)
    with pytest.raises(ValueError, match="experiment.entities=1 must be >= 2 and <= 14"):
        T.TextDebateOptions(entities=1)
    with pytest.raises(ValueError, match="experiment.liar_answer"):
        T.TextDebateOptions(liar_answer="worst")


# ---------------------------------------------------------------------------------------------- judges

MESH = None


def _mesh():
    global MESH
    if MESH is None:
        MESH = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    return MESH


def _tiny_judge(seed=0):
    cfg = ModelConfig(
        vocab_size=101, d_model=16, n_layers=1, n_heads=2, max_seq_len=64, scalar_heads=["judge"]
    )
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))
    return T.QuoteJudge(graphdef, state, CharTokenizer(), 48, 2)


def test_the_judge_sees_only_question_answers_and_marked_quotes():
    questions = passages.make_questions(20, OPTS.passages, seed=2)
    seen: list[P.JudgeView] = []

    def spy(views):
        seen.extend(views)
        return T.simulated_judge(1.0)(views)

    rnd, judge, tok = T.random_quoter(0), _tiny_judge(), CharTokenizer()
    outcomes = P.debate(questions, rnd, rnd, spy, P.QuoteChannel(), P.Schedule(2), P.Budget(max_evidence=1))
    outcomes += P.consultancy(questions, rnd, spy, P.QuoteChannel(), P.Schedule(2), P.Budget(max_evidence=1))
    assert len(seen) == len(outcomes) == 40 + 80
    by_id = {q.id: q for q in questions}
    for v, o in zip(seen, outcomes, strict=True):
        assert v.source is None and v.turns == o.transcript
        q = by_id[o.question_id]
        for t in v.turns:
            for e in t.evidence:
                assert e.verified == P.verify_quote(e.content, q.source)
        # What the learned judge reads: one text per quote of the transcript (its mark and the quoter's claim
        # aligned with it) and nothing else, so no passage sentence it was not shown.
        data = judge.encode([v])
        n = sum(len(t.evidence) for t in v.turns)
        texts = [
            tok.decode(row[1 : m.sum()])
            for row, m in zip(data["tokens"][0, :n], data["mask"][0, :n], strict=True)
        ]
        assert texts == [
            T.evidence_text(v.question, v.answers[t.answer], e) for t in v.turns for e in t.evidence
        ]
        assert (data["sign"][0, n:] == 0).all()
    with pytest.raises(ValueError, match="must not see the passage"):
        _tiny_judge()([P.JudgeView(questions[0].question, questions[0].answers, (), questions[0].source)])


def test_simulated_overseer_believes_the_deciding_quote_and_ignores_unverified_ones():
    q = passages.make_questions(1, OPTS.passages, seed=3)[0]
    true, false = q.answers[q.correct], q.answers[1 - q.correct]
    proof = passages.claim_sentence(q.question, true)
    fake = passages.claim_sentence(q.question, false)
    honest = P.Turn(0, q.correct, "", (P.Evidence("quote", proof, True),))
    liar = P.Turn(1, 1 - q.correct, "", (P.Evidence("quote", fake, False),))
    p_a = T.simulated_judge(1.0)([P.JudgeView(q.question, q.answers, (honest, liar))])[0]
    assert (p_a > 0.9) if q.correct == 0 else (p_a < 0.1)
    p_a = T.simulated_judge(1.0)([P.JudgeView(q.question, q.answers, (liar,))])[0]
    assert p_a == 0.5


# ---------------------------------------------------------------------------------------------- debaters


def test_the_policy_quotes_candidates_and_rl_moves_probability_to_the_rewarded_quote():
    """On one fixed question, reward 1 for the deciding quote and 0 otherwise: PPO steps raise its
    probability well above the initial near-uniform one, and sampled moves follow."""
    q = passages.make_questions(1, OPTS.passages, seed=4)[0]
    tok = CharTokenizer()
    policy_len, _ = T.text_lengths(tok, OPTS)
    cfg = ModelConfig(
        vocab_size=101, d_model=32, n_layers=1, n_heads=2, max_seq_len=128, scalar_heads=["quote"]
    )
    tx = make_optimizer(TrainConfig(steps=40, learning_rate=3e-3, warmup_steps=0, weight_decay=0.0))
    mesh, rules = _mesh(), MeshConfig().rules
    graphdef, state, shardings = init_train_state(cfg, tx, 0, mesh, rules)
    ref = jax.tree.map(lambda x: x.copy(), state)
    n_cand = OPTS.entities * OPTS.relations + 1
    policy = T.QuotePolicy(graphdef, state, tok, policy_len, n_cand, ref_state=ref, seed=0,
                           seen=T.seen_quotes(OPTS))  # fmt: skip
    view = P.AgentView(q.question, q.answers, q.correct, q.source, (), (1 - q.correct,))
    cands = T.candidates(view)
    # The honest side's claim is a passage sentence; the liar's would be a fabrication, offered last.
    assert cands == passages.passage_sentences(q.source)
    liar = P.AgentView(q.question, q.answers, 1 - q.correct, q.source, (), (q.correct,))
    assert T.candidates(liar) == [*cands, passages.claim_sentence(q.question, q.answers[1 - q.correct])]
    assert T.policy_text(liar, T.candidates(liar)[-1]).startswith("D f ")
    target = [cands.index(passages.claim_sentence(q.question, q.answers[q.correct]))]  # the deciding sentence
    tokens, mask, allowed, _ = policy.encode([view])
    p0 = np.exp(policy.log_probs(state, tokens, mask, allowed))[0]
    assert abs(p0[target].sum() - 1 / len(cands)) < 0.1

    step_fn = make_train_step(
        graphdef, partial(T.policy_loss, clip_eps=0.2, kl_coef=0.0, ent_coef=0.0, temperature=1.0), shardings,
        mesh, rules,
    )  # fmt: skip
    # rl.microbatches: with every term of the loss on, one step over four microbatches against one batch
    full = partial(T.policy_loss, clip_eps=0.2, kl_coef=0.1, ent_coef=0.01, temperature=1.0)
    whole = make_train_step(graphdef, full, shardings, mesh, rules)
    accumulated = make_train_step(graphdef, full, shardings, mesh, rules, microbatches=4)
    for it in range(8):
        policy.state, policy.record = state, []
        policy([view] * 32)
        d = policy.record
        r = np.array([float(x.chosen in target) for x in d])
        adv = (r - r.mean()) / (r.std() + 1e-8)
        batch = {
            "tokens": np.stack([x.tokens for x in d]), "mask": np.stack([x.mask for x in d]),
            "allowed": np.stack([x.allowed for x in d]), "chosen": np.array([[x.chosen] for x in d], np.int32),
            "old_logp": np.array([[x.logp[x.chosen]] for x in d], np.float32),
            "ref_logp": np.stack([x.ref_logp for x in d]).astype(np.float32), "advantage": adv[:, None].astype(np.float32),
        }  # fmt: skip
        if it == 0:  # the loss is a mean over rows: four microbatches of 8 give the one-batch gradient
            _, m1 = whole(jax.tree.map(jnp.copy, state), batch)
            _, m4 = accumulated(jax.tree.map(jnp.copy, state), batch)
            assert set(m4) == set(m1) and float(m1["grad_norm"]) > 0
            for k in m1:  # loss, gradient norm, KL, entropy, clip fraction...
                np.testing.assert_allclose(float(m4[k]), float(m1[k]), rtol=1e-4, atol=1e-7, err_msg=k)
        for _ in range(2):
            state, _ = step_fn(state, batch)
    p1 = np.exp(policy.log_probs(state, tokens, mask, allowed))[0]
    assert p1[target].sum() > 0.6 > p0[target].sum() + 0.2
    policy.state, policy.record = state, None
    moves = policy([view] * 50)
    assert sum(m.evidence[0] == cands[target[0]] for m in moves) > 25
    # Already-quoted candidates are never quoted again.
    quoted = P.Turn(0, q.correct, "", (P.Evidence("quote", cands[target[0]], True),))
    again = P.AgentView(q.question, q.answers, q.correct, q.source, (quoted,), ())
    assert all(m.evidence[0] != cands[target[0]] for m in policy([again] * 30))


def _tiny_policy(opts, seed=0):
    """A QuotePolicy reading as many earlier quotes as `opts` says, with the input length for that."""
    tok = CharTokenizer()
    policy_len, _ = T.text_lengths(tok, opts)
    cfg = ModelConfig(
        vocab_size=101, d_model=32, n_layers=1, n_heads=2, max_seq_len=256, scalar_heads=["quote"]
    )
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split((model, model))  # QuotePolicy merges a (model, optimizer)-shaped state
    n_cand = opts.entities * opts.relations + 1
    return T.QuotePolicy(graphdef, state, tok, policy_len, n_cand, seed=seed, seen=T.seen_quotes(opts))


def test_the_second_speaker_reads_the_first_speakers_quote():
    """In sequential debate the second mover's view holds the first move; its policy text, tokens and quote
    scores change with what the opponent quoted (and its [v]/[u] mark), not only with its own candidates."""
    q = passages.make_questions(1, OPTS.passages, seed=6)[0]
    true, false = q.answers[q.correct], q.answers[1 - q.correct]
    seen: list[P.AgentView] = []

    def spy(views):
        seen.extend(views)
        return T.random_quoter(0)(views)

    P.debate([q], spy, spy, T.simulated_judge(1.0), P.QuoteChannel(), P.Schedule(2), P.Budget(max_evidence=1))
    second = [v for v in seen if v.turns]
    assert second and all(len(v.turns) == 1 and v.turns[0].answer != v.answer for v in second)
    for v in second:
        opponent = v.turns[0].evidence[0]
        text = T.policy_text(v, T.candidates(v)[0])
        mark = "v" if opponent.verified else "u"
        quoted = T.aligned(
            passages.claim_sentence(v.question, v.answers[v.turns[0].answer]), opponent.content
        )
        assert text.startswith(f"o[{mark}] {quoted} > D ")
        assert T.policy_text(v, T.candidates(v)[0], seen=0).startswith("D ")  # the transcript-blind policy

    # The same seat, the same candidates; the opponent quoted the deciding sentence, a misleading one or a
    # fabrication: different texts, tokens and scores.
    proof, fake = passages.claim_sentence(q.question, true), passages.claim_sentence(q.question, false)
    misleading = next(s for s in passages.passage_sentences(q.source) if s != proof)
    views = []
    for content in (proof, misleading, fake):
        turn = P.Turn(0, q.correct, "", (P.Evidence("quote", content, P.verify_quote(content, q.source)),))
        views.append(P.AgentView(q.question, q.answers, 1 - q.correct, q.source, (turn,), ()))
    texts = [T.policy_text(v, T.candidates(v)[0]) for v in views]
    assert len(set(texts)) == 3 and "o[u]" in texts[2] and "o[v]" in texts[0]
    policy = _tiny_policy(T.TextDebateOptions(seen_quotes=None))  # reads every earlier quote
    tokens, mask, allowed, _ = policy.encode(views)
    assert not np.array_equal(tokens[0], tokens[1]) and not np.array_equal(tokens[1], tokens[2])
    logp = policy.log_probs(policy.state, tokens, mask, allowed)  # (3, C)
    both = (allowed[0] > 0) & (allowed[1] > 0)
    assert not np.allclose(logp[0][both], logp[1][both])
    # Its own earlier quote is marked m; with seen=1 only the latest quote is read.
    own = P.Turn(0, 1 - q.correct, "", (P.Evidence("quote", misleading, True),))
    later = P.AgentView(q.question, q.answers, 1 - q.correct, q.source, (own, views[0].turns[0]), ())
    assert T.policy_text(later, fake).startswith("m[v] ")
    assert T.policy_text(later, fake, seen=1).startswith("o[v] ")


def test_policy_texts_fit_the_lengths_the_options_give():
    """text_lengths bounds the longest transcript the debater reads: the last mover of a evidence_per_side=3 debate."""
    tok = CharTokenizer()
    for opts in (
        OPTS,
        T.TextDebateOptions(evidence_per_side=3),
        T.TextDebateOptions(evidence_per_side=3, seen_quotes=2),
    ):
        policy_len, _ = T.text_lengths(tok, opts)
        policy = T.QuotePolicy(None, None, tok, policy_len, opts.entities * opts.relations + 1,
                               seen=T.seen_quotes(opts))  # fmt: skip
        most = 0
        for q in passages.make_questions(20, opts.passages, seed=7):
            rnd = T.random_quoter(1)
            views: list[P.AgentView] = []

            def spy(vs, views=views, rnd=rnd):
                views.extend(vs)
                return rnd(vs)

            P.consultancy([q], spy, lambda v: np.full(len(v), 0.5), P.QuoteChannel(),
                          P.Schedule(T.transcript_quotes(opts)), P.Budget(max_evidence=1))  # fmt: skip
            policy.encode(views)  # raises if a text does not fit
            most = max(most, max(T.policy_text(v, T.candidates(v)[0], policy.seen).count("[") for v in views))
        assert (
            most
            == T.seen_quotes(opts)
            == (opts.seen_quotes if opts.seen_quotes is not None else T.transcript_quotes(opts) - 1)
        )


def test_judge_retraining_questions_are_never_held_out_ones():
    """The retraining set skips any generated question that is a held-out one (same facts in any order,
    same question), even when the generator's stream would produce it."""
    held_out = passages.make_questions(30, OPTS.passages, seed=123, prefix="e")
    unfiltered = passages.make_questions(60, OPTS.passages, seed=123, prefix="k")
    keys = {passages.question_key(q) for q in held_out}
    assert (
        sum(passages.question_key(q) in keys for q in unfiltered) == 30
    )  # the same stream: the first 30 collide
    train = passages.training_questions(60, OPTS.passages, seed=123, prefix="k", held_out=held_out)
    assert len(train) == 60 and not any(passages.question_key(q) in keys for q in train)
    # A reordered passage is the same question.
    q = held_out[0]
    shuffled = " ".join(reversed(passages.passage_sentences(q.source)))
    assert passages.question_key(dataclasses.replace(q, source=shuffled)) in keys
    # The transcripts it yields are labelled with the truth and come from these questions only.
    views, labels = T.judge_training_views(train[:5], OPTS, {"debate": P.Schedule(2), "consultancy":
                                           P.Schedule(2)}, P.Budget(max_evidence=1), 0, blind=False)  # fmt: skip
    assert len(views) == len(labels) == 5 * (2 + 4)
    by_question = {(q.question, frozenset(q.answers)): q for q in train[:5]}
    for v, y in zip(views, labels, strict=True):
        q = by_question[(v.question, frozenset(v.answers))]
        assert y == int(v.answers[0] == q.answers[q.correct])
        for t in v.turns:
            for e in t.evidence:
                assert e.verified == P.verify_quote(e.content, q.source)


def test_judge_batches_mix_the_parts_in_their_fractions_each_part_in_its_own_permutations(tmp_path):
    """JudgeTrainer.fit: every batch takes round(fraction x batch) rows from each part; a part's rows come
    in permutations (each row once per epoch); a part too small for its share is a clear error."""
    trainer = object.__new__(T.JudgeTrainer)  # only the batching: no model, a step that records the batch
    trainer.batch, trainer.log_every, trainer.state, batches = 4, 1, None, []
    summaries = {}
    tracker = StageTracker(SimpleNamespace(summary=summaries.update), {})
    stage = lambda steps: Stage("judge", steps, 0, tmp_path, tracker)  # noqa: E731

    def step(state, batch):
        batches.append(batch["label"][:, 0].copy())
        return state, {"loss": 0.0}

    trainer.step_fn, trainer.judge = step, lambda: "judge"
    small = {"label": np.arange(6)[:, None], "x": np.zeros((6, 3))}
    large = {"label": 100 + np.arange(10)[:, None], "x": np.zeros((10, 3))}
    assert trainer.fit([(small, 0.25), (large, 0.75)], stage(6), seed=0, log=lambda *a: None) == "judge"
    assert len(batches) == 6 and all(len(b) == 4 and (b < 100).sum() == 1 for b in batches)
    assert sorted(int(r) for b in batches for r in b if r < 100) == list(range(6))  # one epoch of `small`
    first_epoch = [int(r) for b in batches[:3] for r in b if r >= 100]  # 3 batches x 3 rows of 10
    assert len(set(first_epoch)) == 9
    assert sorted(summaries) == [
        "judge/peak_rss_mib",
        "judge/wall_s",
    ]  # the finished stage's peak memory and time
    trainer.batch = 8
    with pytest.raises(ValueError, match="judge.train.batch_size=8: 8 rows per batch from 6 transcripts"):
        trainer.fit([(small, 1.0)], stage(1), seed=0, log=lambda *a: None)


def test_the_retraining_stage_trains_only_on_training_questions_and_is_measured_on_held_out_ones(
    tmp_path, monkeypatch
):
    """An in-process tiny run with two rounds: every transcript the judge is retrained on comes from
    questions disjoint from the held-out ones, the retrained judge's stages are measured on exactly the
    held-out questions, and the retrained judge differs from the one before."""
    from hydra import compose, initialize_config_dir

    from oversight.cli import CONF_DIR, validate
    from oversight.config import register_configs
    from oversight.registry import RunContext

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *TINY, "experiment.eval_questions=8", "experiment.rl.iterations=1", "experiment.judge.rounds=2",
            "experiment.judge.questions=16", "experiment.judge.train.steps=10", "experiment.bootstrap=10",
            "experiment.judge.train.warmup_steps=1", "experiment.judge.retrain_questions=10",
            "experiment.judge.retrain_steps=5",
        ])  # fmt: skip
    typed, _, options = validate(cfg)
    made, retrain_sets, judged = {}, [], []
    make_questions, training_views = T.make_questions, T.judge_training_views

    def spy_make(n, opts, seed, prefix="q"):
        made[prefix] = make_questions(n, opts, seed, prefix)
        return made[prefix]

    def spy_views(questions, *args, agent=None, **kw):
        if agent is not None:
            retrain_sets.append(list(questions))
        return training_views(questions, *args, agent=agent, **kw)

    monkeypatch.setattr(T, "make_questions", spy_make)
    monkeypatch.setattr(T, "judge_training_views", spy_views)
    fit = T.JudgeTrainer.fit

    def spy_fit(self, parts, stage, seed, log, prefix="judge"):
        judged.append([len(d["label"]) for d, _ in parts])
        return fit(self, parts, stage, seed, log, prefix)

    monkeypatch.setattr(T.JudgeTrainer, "fit", spy_fit)

    class Tracker:
        def __init__(self):
            self.tables, self.summaries = {}, {}

        def log(self, metrics, step):
            pass

        def table(self, name, rows):
            self.tables[name] = rows

        def summary(self, values):
            self.summaries.update(values)

    tracker = Tracker()
    T.run(RunContext(typed, options, tmp_path, tracker, _mesh()))
    held_out = {passages.question_key(q) for q in made["e"]}
    assert len(held_out) == 8 and len(retrain_sets) >= 2
    for questions in retrain_sets:
        assert questions and not any(passages.question_key(q) in held_out for q in questions)
        assert all(q.id.startswith("k") for q in questions)
    # Initial fit on the random-quoter data; each round: random-quoter part + the pool of debater
    # transcripts so far (6 per question: debate and consultancy honest/dishonest, both orders).
    assert judged == [[16 * 8], [16 * 8, 10 * 6], [16 * 8, 20 * 6]]
    rows = tracker.tables["results"]
    stages = {r["stage"] for r in rows if r["metric"] == "debate/accuracy"}
    assert stages == {"before", "after", "judge retrained", "after r2", "judge retrained r2"}
    for r in rows:
        if r["metric"] == "debate/accuracy":
            assert r["n"] == (32 if r["method"] == "consultancy" else 16)  # the 8 held-out questions
    assert tracker.summaries["judge_retrain/transcripts/r2"] == 120


def test_seat_rewards_pay_each_side_the_judges_probability_of_its_answer():
    q = passages.make_questions(1, OPTS.passages, seed=5)[0]
    rnd = T.random_quoter(0)
    outcomes = P.debate([q], rnd, rnd, lambda v: np.full(len(v), 0.8), P.QuoteChannel(), P.Schedule(2))
    rewards = T.seat_rewards(outcomes, {q.id: q}, "prob")
    assert len(rewards) == 4  # two orders x two seats
    for o in outcomes:
        g = q.swapped() if o.swapped else q
        assert rewards[T.game_key(g.source, g.question, g.answers, g.correct)] == pytest.approx(o.p_correct)
        assert rewards[T.game_key(g.source, g.question, g.answers, 1 - g.correct)] == pytest.approx(
            1 - o.p_correct
        )


# ---------------------------------------------------------------------------------------------- end to end

TINY = [
    "experiment=debate_text",
    "tracker=disabled",
    "model.d_model=32",
    "model.n_layers=1",
    "experiment.eval_questions=24",
    "experiment.judge.questions=64",
    "experiment.judge.train.steps=30",
    "experiment.judge.train.warmup_steps=3",
    "experiment.judge.train.batch_size=32",
    "experiment.judge.model.d_model=16",
    "experiment.judge.model.n_layers=1",
    "experiment.rl.iterations=2",
    "experiment.rl.rollout_batch=4",
    "experiment.bootstrap=50",
    "experiment.judge.retrain_questions=12",
    "experiment.judge.retrain_steps=10",
]


def _oversight(*args: str) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as a user runs it
    proc = subprocess.run([sys.executable, "-m", "oversight.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_a_tiny_run_writes_every_protocol_before_and_after_training_with_intervals(tmp_path):
    """...and again after the judge is retrained on the trained debaters' transcripts (stage "judge
    retrained"), with its retraining logged."""
    run_dir = tmp_path / "run"
    _oversight(*TINY, f"hydra.run.dir={run_dir}")
    rows = _rows(run_dir)
    acc = {(r["method"], r["stage"]): r for r in rows if r["metric"] == "debate/accuracy"}
    methods = ("blind judge", "consultancy", "debate", "oracle judge")
    stages = ("before", "after", "judge retrained")
    assert set(acc) == {(m, s) for m in methods for s in stages}
    assert {r["round"] for r in acc.values() if r["stage"] == "judge retrained"} == {1}
    for (method, _), r in acc.items():
        assert r["n"] == (96 if method == "consultancy" else 48), method  # both orders (x honest/dishonest)
        assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9
    assert acc[("oracle judge", "after")]["value"] == 1.0
    assert all(r["evidence_per_side"] == 1 and r["evidence_unit"] == "quote" for r in acc.values())
    split = {r["metric"]: r for r in rows if r.get("method") == "consultancy" and r.get("stage") == "after"}
    mean = (split["debate/accuracy_honest"]["value"] + split["debate/accuracy_dishonest"]["value"]) / 2
    assert acc[("consultancy", "after")]["value"] == pytest.approx(mean)
    win = [r for r in rows if r["metric"] == "debate/honest_win_rate"]
    assert sorted(r["stage"] for r in win) == ["after", "before", "judge retrained"]
    kinds = {r["stage"] for r in rows if r["metric"] == "debate/quote_liar_irrelevant"}
    assert kinds == set(stages)
    kinds = [r for r in rows if r["metric"].startswith("debate/quote_honest_")]
    assert {r["metric"].rsplit("_", 1)[1] for r in kinds} == {
        "deciding",
        "misleading",
        "irrelevant",
        "unverified",
    }
    elo = [r for r in rows if r["metric"] == "debate/elo"]
    assert sorted((r["agent"], r["side"]) for r in elo) == [
        ("initial", "honest"), ("initial", "liar"), ("trained", "honest"), ("trained", "liar"),
    ]  # fmt: skip
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*metrics)
    assert {"judge/loss", "rl/kl_ref", "rl/honest_reward", "judge_retrain/loss"} <= keys
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["judge_retrain/transcripts/r1"] == 12 * 6  # debate + consultancy, both orders


# ---------------------------------------------------------------------------------------------- HF checkpoint


def _words() -> list[str]:
    words = {
        *passages.NAMES,
        *passages.CITIES,
        *" ".join(passages.RELATIONS).split(),
        "which",
        "city",
        "It",
        "is",
    }
    words |= {"D", "C", "p", "f", "v", "u", "m", "o"}  # protocol, provenance, verification, quoter marks
    return sorted(words) + [".", "?", "|", ".|", "[", "]", "||", ">"]


def _tiny_hf_checkpoint(folder: Path) -> None:
    """A 1-layer GPT-2 and a word-level tokenizer over the task's words, saved as transformers saves them."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "[UNK]", *_words()])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<eos>", pad_token="<pad>", unk_token="[UNK]"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=1,
                        eos_token_id=1)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)


def test_debaters_and_judge_from_a_tiny_imported_checkpoint_play_the_protocols(tmp_path):
    """In process: the imported weights are what the policy and judge run on, and every protocol plays."""
    ckpt = tmp_path / "hf"
    _tiny_hf_checkpoint(ckpt)
    from safetensors.numpy import load_file

    from oversight.models import build_model_config

    tok = load_tokenizer(str(ckpt))
    opts = T.TextDebateOptions()
    policy_len, judge_len = T.text_lengths(tok, opts)
    mesh, rules = _mesh(), MeshConfig().rules
    tx = make_optimizer(TrainConfig(steps=1))
    d_cfg = build_model_config(ModelConfig(checkpoint=str(ckpt), scalar_heads=["quote"]), tok)
    graphdef, state, _ = init_train_state(d_cfg, tx, 0, mesh, rules)
    wte = load_file(str(ckpt / "model.safetensors"))["transformer.wte.weight"]
    assert np.allclose(np.asarray(nnx.merge(graphdef, state)[0].embed[...]), wte)
    policy = T.QuotePolicy(graphdef, state, tok, policy_len, opts.entities * opts.relations + 1, seed=0,
                           seen=T.seen_quotes(opts))  # fmt: skip
    j_cfg = build_model_config(ModelConfig(checkpoint=str(ckpt), scalar_heads=["judge"]), tok)
    jg, js, _ = init_train_state(j_cfg, tx, 1, mesh, rules)
    model_graphdef, model_state = nnx.split(nnx.merge(jg, js)[0])
    judge = T.QuoteJudge(model_graphdef, model_state, tok, judge_len, 2)
    qs = passages.make_questions(6, opts.passages, seed=0)
    ch, budget = P.QuoteChannel(), P.Budget(max_evidence=1)
    d = P.debate(qs, policy, policy, judge, ch, P.Schedule(2), budget)
    c = P.consultancy(qs, policy, judge, ch, P.Schedule(2), budget)
    assert len(d) == 12 and len(c) == 24
    assert all(len(o.transcript) == 2 and 0 <= o.p_correct <= 1 for o in d + c)
    assert all(e.verified == P.verify_quote(e.content, qs[0].source) for o in d[:2] for t in o.transcript
               for e in t.evidence)  # fmt: skip
    assert [o.p_correct for o in P.blind(qs, judge)] == [0.5] * 12


@pytest.mark.slow
def test_the_cli_runs_with_a_tiny_imported_hugging_face_checkpoint(tmp_path):
    ckpt = tmp_path / "hf"
    _tiny_hf_checkpoint(ckpt)
    tok = load_tokenizer(str(ckpt))
    q = passages.make_questions(1, OPTS.passages, seed=0)[0]
    view = P.AgentView(q.question, q.answers, 1 - q.correct, q.source, (), (q.correct,))
    texts = [T.policy_text(view, c) for c in T.candidates(view)]
    turn = P.Turn(0, q.correct, "", (P.Evidence("quote", T.candidates(view)[0], True),))
    later = dataclasses.replace(view, turns=(turn,))
    texts += [T.policy_text(later, c) for c in T.candidates(later)]  # with the opponent's quote read
    texts += [
        T.evidence_text(q.question, a, P.Evidence("quote", c, False))
        for a in q.answers
        for c in T.candidates(view)
    ]
    assert all(
        2 not in tok.encode(t) for t in texts
    )  # every word of the task is in the vocabulary (2 = [UNK])
    run_dir = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("model.")]
    _oversight(*args, "model=hf", f"model.checkpoint={ckpt}", f"tokenizer={ckpt}",
               f"experiment.judge.model.checkpoint={ckpt}", f"hydra.run.dir={run_dir}")  # fmt: skip
    rows = _rows(run_dir)
    acc = {(r["method"], r["stage"]) for r in rows if r["metric"] == "debate/accuracy"}
    assert ("debate", "after") in acc and ("consultancy", "before") in acc
    summary = json.loads((run_dir / "summary.json").read_text())
    from oversight.models.hf_import import read_model_config

    hf = read_model_config(ckpt, scalar_heads=["quote"])
    assert summary["debater/params"] == hf.num_params()  # the debaters are the imported architecture
    assert summary["judge/params"] == read_model_config(ckpt, scalar_heads=["judge"]).num_params()
