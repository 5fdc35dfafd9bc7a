"""The `debate_digits` experiment: reveals, search debaters against a fixed judge, a CLI run, its notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import oversight
from oversight import protocols as P
from oversight.experiments.debate import digits as D
from oversight.stats import wilson_interval
from oversight.tasks.digits import load_split
from oversight.tracking.runs import load_results

REPO = Path(oversight.__file__).resolve().parents[1]


def test_random_reveal_picks_k_distinct_nonzero_pixels():
    x, *_ = load_split(0.25, seed=0)
    mask = np.asarray(D.random_reveal(jax.random.key(0), jnp.asarray(x[:200]), 5))  # (200, 64)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert (mask.sum(1) == 5).all()
    assert (x[:200][mask > 0] > 0).all()
    assert (np.asarray(D.random_reveal(jax.random.key(0), jnp.asarray(x[:3]), None)) == 1).all()


def _fixed_judge(seed=0, hidden=16):
    graphdef, state = nnx.split(D.SparseJudge(hidden, rngs=nnx.Rngs(seed)))
    return D.TrainedJudge(graphdef, state, k=4)


def _brute_force(judge, x, mask, mine, other, signs):
    """Exact minimax over every line of distinct allowed pixels, scored by the judge at the leaf."""

    def value(mask, level):
        if level == len(signs):
            logits = judge(x[None], mask[None])[0]
            return logits[mine] - logits[other]
        children = [i for i in range(64) if x[i] > 0 and mask[i] == 0]
        vals = []
        for i in children:
            m = mask.copy()
            m[i] = 1
            vals.append(value(m, level + 1))
        return max(vals) if signs[level] > 0 else min(vals)

    children = [i for i in range(64) if x[i] > 0 and mask[i] == 0]
    root = {}
    for i in children:
        m = mask.copy()
        m[i] = 1
        root[i] = value(m, 1)
    return root


@pytest.mark.parametrize("signs", [(1, -1, 1), (1, 1, 1), (1, -1, -1), (1, -1)])
def test_lookahead_with_a_full_pool_is_exact_minimax(signs):
    judge = _fixed_judge()
    rng = np.random.default_rng(1)
    # Three games, each with 5 revealable pixels (6 nonzero, one already revealed in the second game).
    xs, masks = np.zeros((3, 64), np.float32), np.zeros((3, 64), np.float32)
    for b in range(3):
        on = rng.choice(64, 6 if b == 1 else 5, replace=False)
        xs[b, on] = rng.uniform(0.1, 1.0, len(on))
        if b == 1:
            masks[b, on[0]] = 1
    mine, other = np.array([3, 0, 9], np.int32), np.array([7, 1, 2], np.int32)
    fn = jax.jit(lambda *a: D._lookahead(judge.graphdef, *a, signs=signs, width=5))
    picks = np.asarray(fn(judge.state, xs, masks, mine, other))
    for b in range(3):
        root = _brute_force(judge, xs[b], masks[b], mine[b], other[b], signs)
        best = max(root.values())
        assert root[int(picks[b])] == pytest.approx(best, abs=1e-5), (b, root, picks[b])
        # And the pick is not trivially right: some root move is worse.
        assert min(root.values()) < best - 1e-4


@pytest.fixture(scope="module")
def small_judge():
    x_train, y_train, x_test, y_test = load_split(0.25, seed=0)
    opts = D.DigitsDebateOptions(judge_steps=500, judge_hidden=64)
    return D.train_judge(x_train, y_train, 4, opts, seed=0), x_test[:40], y_test[:40]


def _honest_wins(outcomes):
    return sum(o.correct for o in outcomes), len(outcomes)


def test_search_debaters_beat_random_ones_against_a_fixed_judge(small_judge):
    judge, x, y = small_judge
    rng = np.random.default_rng(0)
    lies = [(int(t) + int(rng.integers(1, 10))) % 10 for t in y]
    questions = [P.Question(x[i], (int(y[i]), lies[i]), correct=0, id=i) for i in range(len(y))]
    decide = D.pixel_judge(judge)

    def play(honest, liar):
        agents = {k: D.SearchDebater(judge, k, depth=2, width=3, seed=1) for k in {honest, liar}}
        return _honest_wins(P.debate(questions, agents[honest], agents[liar], decide, P.PixelChannel(),
                                     P.Schedule(4), P.Budget(max_evidence=1)))  # fmt: skip

    base_lo, base_hi = wilson_interval(*play("random", "random"))
    for search in ("greedy", "lookahead"):
        # As honest debater against a random liar: the judge is right more often than with random pixels.
        lo, _ = wilson_interval(*play(search, "random"))
        assert lo > base_hi, (search, "honest")
        # As liar against a random honest debater: the judge is wrong more often.
        _, hi = wilson_interval(*play("random", search))
        assert hi < base_lo, (search, "liar")


def test_debaters_reveal_only_nonzero_unrevealed_pixels_and_the_judge_sees_only_reveals(small_judge):
    judge, x, y = small_judge
    questions = [P.Question(x[i], (int(y[i]), (int(y[i]) + 1) % 10), correct=0, id=i) for i in range(10)]
    seen = []

    def spy(views):
        seen.extend(v.source for v in views)
        return D.pixel_judge(judge)(views)

    greedy = D.SearchDebater(judge, "greedy")
    outcomes = P.debate(questions, greedy, D.SearchDebater(judge, "lookahead", depth=2, width=2), spy,
                        P.PixelChannel(), P.Schedule(6))  # fmt: skip
    assert all(s is None for s in seen)
    for o in outcomes:
        pixels = [e.content[0] for t in o.transcript for e in t.evidence]
        assert len(pixels) == len(set(pixels)) == 6
        image = x[int(o.question_id)]
        assert all(image[i] > 0 and e.content[1] == image[i] for t in o.transcript for e in t.evidence
                   for i in [e.content[0]])  # fmt: skip


def test_bad_options_fail_naming_the_key():
    with pytest.raises(ValueError, match="experiment.evidence_per_side: 9 pixels a side is outside 1..8"):
        D._check_budgets(D.DigitsDebateOptions(evidence_per_side=[9]), 16)
    with pytest.raises(ValueError, match="experiment.liar_label='best' is not one of confusable"):
        D.DigitsDebateOptions(liar_label="best")
    with pytest.raises(
        ValueError, match=r"experiment.agents=\['mcts'\] holds 'mcts': each element must be one of"
    ):
        D.DigitsDebateOptions(agents=["mcts"])
    with pytest.raises(ValueError, match="search_depth=4 must be in 1..search_width=3"):
        D.DigitsDebateOptions(search_depth=4)
    with pytest.raises(ValueError, match="learned_group=1 must be >= 2"):
        D.DigitsDebateOptions(learned_group=1)
    with pytest.raises(ValueError, match="learned_consultancy=1.5 must be >= 0 and <= 1"):
        D.DigitsDebateOptions(learned_consultancy=1.5)
    with pytest.raises(ValueError, match="unknown search debater 'learned'"):
        D.SearchDebater(None, "learned")


# ---------------------------------------------------------------------------------------------- end to end

TINY = [
    "experiment=debate_digits",
    "tracker=disabled",
    "experiment.evidence_per_side=[1,2]",
    "experiment.max_questions=24",
    "experiment.judge_steps=100",
    "experiment.judge_hidden=32",
    "experiment.agents=[random,greedy]",
    "experiment.consultant=greedy",
    "experiment.bootstrap=50",
]


def _oversight(*args: str) -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device, as a user runs it (conftest forces 8 for the sharding tests)
    proc = subprocess.run(
        [sys.executable, "-m", "oversight.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("debate") / "run"
    _oversight(*TINY, f"hydra.run.dir={run_dir}")
    return run_dir


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_a_run_writes_every_protocol_with_intervals(tiny_run):
    for name in ("config.yaml", "metrics.jsonl", "results.jsonl", "summary.json"):
        assert (tiny_run / name).is_file(), name
    rows = _rows(tiny_run)
    acc = {(r["method"], r["k"]): r for r in rows if r["metric"] == "debate/accuracy"}
    methods = {"blind judge", "random pixels", "debate greedy", "consultancy greedy", "oracle judge"}
    assert set(acc) == {(m, k) for m in methods for k in (2, 4)}
    for (method, _), r in acc.items():
        # Both answer orders of 24 questions; consultancy plays each honest and dishonest.
        assert r["n"] == (96 if method.startswith("consultancy") else 48), method
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    tenway = [r for r in rows if r["metric"] == "judge/accuracy_10way"]
    assert sorted(r["k"] for r in tenway) == [2, 4] and all(r["n"] == 24 for r in tenway)
    # The budget: evidence_per_side pixels a debater reveals, the judge sees k = twice as many.
    assert all(r["k"] == 2 * r["evidence_per_side"] and r["evidence_unit"] == "pixel" for r in rows)
    firsts = {(r["method"], r["k"]): r["n"] for r in rows if r["metric"] == "debate/accuracy_honest_first"}
    assert firsts[("debate greedy", 4)] == 24
    split = {r["metric"]: r for r in rows if r.get("method") == "consultancy greedy" and r["k"] == 4}
    assert split["debate/accuracy_honest"]["n"] == split["debate/accuracy_dishonest"]["n"] == 48
    mean = (split["debate/accuracy_honest"]["value"] + split["debate/accuracy_dishonest"]["value"]) / 2
    assert acc[("consultancy greedy", 4)]["value"] == pytest.approx(mean)
    elo = [r for r in rows if r["metric"] == "debate/elo" and r["k"] == 4]
    assert sorted((r["agent"], r["side"]) for r in elo) == [
        ("greedy", "honest"), ("greedy", "liar"), ("random", "honest"), ("random", "liar"),
    ]  # fmt: skip
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert {"judge_full/loss", "judge_k2/loss", "judge_k4/loss"} <= set().union(*metrics)


@pytest.mark.slow
def test_a_seed_sweep_runs_and_pools_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    _oversight("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert sorted(p.parent.name for p in sweep.glob("*/results.jsonl")) == ["0", "1"]
    assert _rows(sweep / "0") != _rows(sweep / "1")  # another split, judge and debaters per seed
    table = D.seed_table(load_results(sweep))
    row = table[(table["method"] == "debate greedy") & (table["k"] == 4)].iloc[0]
    assert row["runs"] == 2 and row["games"] == 96 and row["ci_low"] <= row["mean"] <= row["ci_high"]
    runs = [r for s in "01" for r in _rows(sweep / s) if r["metric"] == "debate/accuracy"
            and r["method"] == "debate greedy" and r["k"] == 4]  # fmt: skip
    assert row["mean"] == pytest.approx(np.mean([r["value"] for r in runs]))


def test_the_notebook_plots_accuracy_against_the_evidence_budget(tiny_run, execute_notebook):
    printed, _ = execute_notebook(
        "debate.ipynb",
        tiny_run,
        "print(sorted(table['method'].unique()), sorted(int(k) for k in table['k'].unique()),"
        " table['runs'].max(), len(fig.axes), len(fig.axes[0].lines) > 0)",
    )
    methods = ["blind judge", "consultancy greedy", "debate greedy", "oracle judge", "random pixels"]
    assert printed.strip() == f"{methods} [2, 4] 1 2 True"


# ------------------------------------------------------------------------------------------ learned debater


def _policy(seed=0, hidden=32, bias=None):
    """A PixelPolicy as an engine agent; `bias` (64,) overrides the output layer's bias."""
    model = D.PixelPolicy(hidden, rngs=nnx.Rngs(seed))
    if bias is not None:
        model.out.bias[...] = jnp.asarray(bias, jnp.float32)
    graphdef, state = nnx.split(model)
    return D.LearnedDebater(graphdef, state)


def _view(image, revealed, mine=0, other=1, upcoming=(1, 0)):
    turns = tuple(P.Turn(t % 2, t % 2, "", (P.Evidence("pixel", (int(i), float(image[i])), True),))
                  for t, i in enumerate(revealed))  # fmt: skip
    return P.AgentView(None, (mine, other), 0, image, turns, upcoming)


def test_learned_debater_never_reveals_a_revealed_or_zero_pixel():
    x, *_ = load_split(0.25, seed=0)
    # Without the mask the policy would pick a pixel of `favoured` (a +100 bias), which are all either zero
    # or already revealed in these games: it must pick another nonzero pixel.
    favoured = np.arange(16, 48)
    bias = np.zeros(64)
    bias[favoured] = 100.0
    debater = _policy(bias=bias)
    games = [i for i in range(200) if (x[i][np.setdiff1d(np.arange(64), favoured)] > 0).any()][:50]
    views = [_view(x[i], [p for p in favoured if x[i][p] > 0]) for i in games]
    picks = [m.evidence[0] for m in debater(views)]
    for i, p in zip(games, picks, strict=True):
        assert p not in favoured and x[i][p] > 0, (i, p)
    # The assertion is not vacuous: with every pixel allowed, the same weights pick a favoured pixel.
    model = nnx.merge(debater.graphdef, debater.state)
    xs = np.stack([x[i] for i in games])
    values, mask = D._revealed(views)
    feats = D.policy_features(xs, values, mask, np.zeros(len(games), int), np.ones(len(games), int),
                              np.zeros(len(games), int), np.ones(len(games)), np.ones(len(games)))  # fmt: skip
    free = np.asarray(model(feats, np.ones_like(xs, bool)).argmax(-1))
    assert np.isin(free, favoured).all()


def test_vectorised_games_reveal_k_distinct_nonzero_pixels(small_judge):
    judge, x, y = small_judge
    debater = _policy(seed=3)
    n, k = len(y), 4
    table = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.int32)  # D.GAME_TYPES
    movers = table[np.arange(n) % 4]
    claims = np.stack([y, (y + 3) % 10], axis=-1).astype(np.int32)
    for kinds, sample in (
        (("policy", "policy"), True),
        (("policy", "greedy"), False),
        (("random", "policy"), True),
    ):
        mask, logp, ent, p = D._play_batch(
            debater.graphdef, debater.state, judge.graphdef, judge.state, jnp.asarray(x), claims, movers,
            np.zeros(n, np.int32), jax.random.key(0), kinds=kinds, sample=sample,
        )  # fmt: skip
        mask = np.asarray(mask)
        assert (mask.sum(1) == k).all() and (x[mask > 0] > 0).all(), kinds
        policy_moves = np.asarray(movers == 0) if kinds[0] == "policy" else np.asarray(movers == 1)
        if kinds[1] == "policy":
            policy_moves |= np.asarray(movers == 1)
        assert (np.asarray(logp)[policy_moves] < 0).all() and (np.asarray(logp)[~policy_moves] == 0).all()
        assert ((np.asarray(p) > 0) & (np.asarray(p) < 1)).all()


def test_learned_debater_plays_debate_and_consultancy_in_the_engine(small_judge):
    judge, x, y = small_judge
    questions = [P.Question(x[i], (int(y[i]), (int(y[i]) + 5) % 10), correct=0, id=i) for i in range(12)]
    learned, greedy = _policy(seed=1), D.SearchDebater(judge, "greedy")
    decide, channel, schedule = D.pixel_judge(judge), P.PixelChannel(), P.Schedule(4)
    for honest, liar in ((learned, greedy), (greedy, learned), (learned, learned)):
        outcomes = P.debate(questions, honest, liar, decide, channel, schedule, P.Budget(max_evidence=1))
        assert sorted(o.honest_first for o in outcomes) == [False] * 12 + [True] * 12
        for o in outcomes:
            pixels = [e.content[0] for t in o.transcript for e in t.evidence]
            assert len(set(pixels)) == 4 and all(x[o.question_id][i] > 0 for i in pixels)
    outcomes = P.consultancy(questions, learned, decide, channel, schedule, P.Budget(max_evidence=1))
    assert len(outcomes) == 48 and {o.assignment for o in outcomes} == {"honest", "dishonest"}
    assert all(len({e.content[0] for t in o.transcript for e in t.evidence}) == 4 for o in outcomes)


def test_self_play_rl_raises_the_honest_win_rate_against_a_fixed_greedy_liar(small_judge):
    judge, *_ = small_judge
    x_train, y_train, x_test, y_test = load_split(0.25, seed=0)
    x_test, y_test = x_test[:200], y_test[:200]
    opts = D.DigitsDebateOptions(learned_steps=200, learned_batch=64, learned_hidden=64)
    rng = np.random.default_rng(0)
    lies = np.array([c for (c,) in D.liar_labels(judge, x_train, y_train, opts, rng)], np.int32)
    questions = [P.Question(x_test[i], (int(y_test[i]), int(c)), correct=0, id=i)
                 for i, (c,) in enumerate(D.liar_labels(judge, x_test, y_test, opts, rng))]  # fmt: skip
    greedy = D.SearchDebater(judge, "greedy")
    curve = []

    def honest_wins(debater):  # engine games on held-out images, both orders
        return _honest_wins(P.debate(questions, debater, greedy, D.pixel_judge(judge), P.PixelChannel(),
                                     P.Schedule(4), P.Budget(max_evidence=1)))  # fmt: skip

    def monitor(debater, done):
        if done == 0:
            curve.append(honest_wins(D.LearnedDebater(debater.graphdef, debater.state)))

    trained = D.train_learned_debater(judge, x_train, y_train, lies, opts, seed=0, monitor=monitor)
    before, after = curve[0], honest_wins(trained)
    _, before_hi = wilson_interval(*before)
    after_lo, _ = wilson_interval(*after)
    assert after_lo > before_hi + 0.1, (before, after)


def test_a_run_with_the_learned_debater_reports_it_everywhere(tmp_path):
    run_dir = tmp_path / "run"
    _oversight(*TINY, "experiment.evidence_per_side=[1]", "experiment.max_questions=16", "experiment.agents=[greedy,learned]",
               "experiment.consultant=learned", "experiment.learned_steps=20", "experiment.learned_batch=16",
               "experiment.learned_hidden=16", f"hydra.run.dir={run_dir}")  # fmt: skip
    rows = _rows(run_dir)
    acc = {r["method"]: r["n"] for r in rows if r["metric"] == "debate/accuracy"}
    assert acc["debate learned"] == 32 and acc["consultancy learned"] == 64
    cross = {
        (r["honest_agent"], r["liar_agent"])
        for r in rows
        if r["metric"] == "debate/crossplay_honest_win_rate"
    }
    assert cross == {("greedy", "learned"), ("learned", "greedy")}
    elo = {(r["agent"], r["side"]) for r in rows if r["metric"] == "debate/elo"}
    assert {("learned", "honest"), ("learned", "liar")} <= elo
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [m for m in metrics if "learned_k2/debate_honest_win_rate" in m]
    assert [m["learned_k2/step"] for m in curve] == list(range(1, 21))
    probes = [m["learned_k2/step"] for m in metrics if "learned_k2/honest_win_vs_greedy" in m]
    assert probes == [0, 20]
    steps = [m["step"] for m in metrics]
    assert steps == sorted(set(steps))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"learned_k2/honest_win_vs_greedy/before", "learned_k2/honest_win_vs_greedy/after"} <= set(summary)
