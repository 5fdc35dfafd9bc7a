"""Sparse-pixel image debate (Irving, Christiano & Amodei 2018, §3.1) on scikit-learn's 8x8 digits.

    oversight experiment=debate_digits                 # k = 4 and 6 pixels, about 1-2 minutes on 2 CPU cores
    oversight -m experiment=debate_digits seed=0,1,2   # the 3-seed table

The judge is a small JAX/Flax NNX MLP that sees k revealed pixels (values and a reveal mask), trained on
random k-pixel reveals of the training split, as Irving et al. trained theirs on random MNIST reveals. On
held-out images the honest debater claims the true label and the liar another one; they alternately reveal
pixels (k in all, only nonzero pixels, as in the paper) through the engine's `PixelChannel`, and the judge,
restricted to the two claims, picks one. The honest win rate is the judge's accuracy under debate.

Debaters search against the judge: `greedy` reveals the pixel that most raises the judge's log-odds for its
claim; `lookahead` runs a minimax over the next `search_depth` reveals, restricted to the `search_width` best
pixels for each side at the root. Both are vectorised over all games with jax.vmap-style batching under jit.

The liar's label: by default the *most confusable* wrong label of each image (the wrong class the k-pixel
judge rates highest on average over random reveals): the strongest fixed lie, committed to before the game
(Irving et al.'s precommit setting). `liar_label=all` plays every wrong label (9 games per image), `random`
one at random.

Protocols on the same questions, each with both answer orders (honest first and liar first):
blind judge (class prior, no pixels), random pixels (k random nonzero pixels = random vs random debate),
consultancy (one look-ahead consultant, honest or dishonest, both counted), debate (a cross-play tournament
of random / greedy / look-ahead debaters; Elo per agent and side fitted from it), oracle judge (a classifier
that sees the whole image). Also the 10-way accuracy of the judge from k random pixels, the number Irving et
al. report as "judge accuracy" (59.4% at 6 pixels, 48.2% at 4 on MNIST).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

from experiments.debate import protocol as P
from oversight.registry import Experiment, RunContext
from oversight.stats import proportion_row, wilson_interval

N_PIXELS = 64
N_CLASSES = 10
AGENTS = ("random", "greedy", "lookahead")
LIAR_LABELS = ("confusable", "random", "all")
METHOD_NAMES = {"random": "random pixels", "greedy": "debate greedy", "lookahead": "debate look-ahead"}


@dataclass
class DigitsDebateOptions:
    # Evidence budgets k: pixels revealed in all (each debater reveals k/2); one judge is trained per k.
    pixels: list[int] = field(default_factory=lambda: [4, 6])
    # Share of the 1797 images held out for the debates (the judge never trains on them).
    test_fraction: float = 0.25
    # Use only the first N held-out images (None: all); for quick tests.
    max_questions: int | None = None
    # Judge MLP width (two hidden layers) and training on random k-pixel reveals.
    judge_hidden: int = 128
    judge_steps: int = 3000
    judge_batch: int = 128
    judge_learning_rate: float = 0.001
    # The liar's claimed label: confusable (the judge's likeliest wrong class), random, or all (9 games).
    liar_label: str = "confusable"
    # Random reveals per image used to find the most confusable wrong label.
    confusable_reveals: int = 16
    # Look-ahead search: minimax over the next `search_depth` reveals, among the `search_width` best pixels
    # for each side at the root.
    search_depth: int = 3
    search_width: int = 3
    # Debaters of the cross-play tournament (every honest agent meets every liar).
    agents: list[str] = field(default_factory=lambda: list(AGENTS))
    # Search used by the consultant.
    consultant: str = "lookahead"
    # Both debaters reveal at once each round, each blind to the other's pixel of that round.
    simultaneous: bool = False
    # Bootstrap resamples for the log-score / ECE / Brier intervals.
    bootstrap: int = 1000


def _check(opts: DigitsDebateOptions, min_nonzero: int) -> None:
    for k in opts.pixels:
        if not 1 <= k <= min_nonzero:
            raise ValueError(
                f"experiment.pixels: {k} is outside 1..{min_nonzero} (fewest nonzero pixels of an image)"
            )
        if opts.simultaneous and k % 2:
            raise ValueError(f"experiment.pixels: {k} is odd, simultaneous debate needs an even budget")
    if opts.liar_label not in LIAR_LABELS:
        raise ValueError(f"experiment.liar_label={opts.liar_label!r} is not one of {', '.join(LIAR_LABELS)}")
    for name in [*opts.agents, opts.consultant]:
        if name not in AGENTS:
            raise ValueError(
                f"experiment.agents/consultant: unknown debater {name!r}; known: {', '.join(AGENTS)}"
            )
    if not 1 <= opts.search_depth <= opts.search_width:
        raise ValueError(
            f"experiment.search_depth={opts.search_depth} must be in 1..search_width={opts.search_width}"
            " (the pool must hold enough distinct pixels for a full line of play)"
        )
    if not 0 < opts.test_fraction < 1:
        raise ValueError(f"experiment.test_fraction={opts.test_fraction} must be in (0, 1)")


# ----------------------------------------------------------------------------------------------------------
# Judge: an MLP on (revealed values, reveal mask)
# ----------------------------------------------------------------------------------------------------------


class SparseJudge(nnx.Module):
    """Classifies a digit from a few revealed pixels: input = [values * mask, mask], as in Irving et al."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(2 * N_PIXELS, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, N_CLASSES, rngs=rngs)

    def __call__(self, values: jax.Array, mask: jax.Array) -> jax.Array:
        # values, mask: (..., 64) in [0, 1] and {0, 1} -> logits (..., 10)
        h = jnp.concatenate([values * mask, mask], axis=-1)
        h = nnx.relu(self.l1(h))
        h = nnx.relu(self.l2(h))
        return self.out(h)


def random_reveal(key: jax.Array, x: jax.Array, k) -> jax.Array:
    """Mask of k distinct nonzero pixels per image, uniformly at random (all pixels when k is None).

    `k` may be a traced integer, so one compiled training step serves every budget.
    """
    # x: (B, 64) -> mask (B, 64)
    if k is None:
        return jnp.ones_like(x)
    scores = jnp.where(x > 0, jax.random.uniform(key, x.shape), -1.0)
    rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)  # 0 = highest score
    return ((rank < k) & (x > 0)).astype(x.dtype)


class TrainedJudge:
    """A trained SparseJudge with jitted entry points (the graph is static, the weights an argument)."""

    def __init__(self, graphdef, state, k: int | None):
        self.graphdef, self.state, self.k = graphdef, state, k
        self.logits = partial(_apply_jit, graphdef)

    def __call__(self, values, mask) -> np.ndarray:
        return np.asarray(self.logits(self.state, jnp.asarray(values), jnp.asarray(mask)))


def _apply(graphdef, state, values, mask):
    return nnx.merge(graphdef, state)(values, mask)


# Module-level jits with the (hashable) graph static: judges of one shape share their compiled programs.
_apply_jit = jax.jit(_apply, static_argnums=0)


@partial(jax.jit, static_argnames=("graphdef", "batch", "learning_rate", "steps"))
def _train_chunk(graphdef, state, opt_state, xs, ys, key, *, k, batch, learning_rate, steps):
    """`steps` Adam steps on fresh random reveals, in one scan (module level, so compiles are shared)."""
    tx = optax.adam(learning_rate)

    def loss_fn(state, xb, yb, key):
        mask = jnp.where(k < 0, 1.0, random_reveal(key, xb, k))  # k < 0: the whole image
        logits = _apply(graphdef, state, xb, mask)  # (B, 10)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry, key):
        state, opt_state = carry
        k_idx, k_mask = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch,), 0, xs.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(state, xs[idx], ys[idx], k_mask)
        updates, opt_state = tx.update(grads, opt_state, state)
        return (optax.apply_updates(state, updates), opt_state), loss

    (state, opt_state), losses = jax.lax.scan(step, (state, opt_state), jax.random.split(key, steps))
    return state, opt_state, losses.mean()


def _init_judge(hidden: int, seed: int):
    """Graph and freshly initialised weights; initialised under jit (eager init compiles op by op)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: SparseJudge(hidden, rngs=nnx.Rngs(0))))
    state = _init_state_jit(hidden, jax.random.key(seed))
    return graphdef, state


@partial(jax.jit, static_argnums=0)
def _init_state_jit(hidden, key):
    return nnx.split(SparseJudge(hidden, rngs=nnx.Rngs(key)))[1]


def train_judge(
    x: np.ndarray, y: np.ndarray, k: int | None, opts: DigitsDebateOptions, seed: int, log=None
) -> TrainedJudge:
    """Trains on fresh random k-pixel reveals every batch (k=None: whole images, the oracle)."""
    # x: (N, 64) in [0, 1]; y: (N,)
    graphdef, state = _init_judge(opts.judge_hidden, seed)
    opt_state = optax.adam(opts.judge_learning_rate).init(state)
    xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    chunk = min(250, opts.judge_steps)  # steps per jitted scan; judge_steps rounds up to a multiple
    hyper = {
        "k": -1 if k is None else k,
        "batch": opts.judge_batch,
        "learning_rate": opts.judge_learning_rate,
        "steps": chunk,
    }
    key = jax.random.key(seed)
    done = 0
    while done < opts.judge_steps:
        key, sub = jax.random.split(key)
        state, opt_state, loss = _train_chunk(graphdef, state, opt_state, xs, ys, sub, **hyper)
        done += chunk
        if log is not None:
            log(float(loss), done)
    return TrainedJudge(graphdef, state, k)


# ----------------------------------------------------------------------------------------------------------
# Debaters: search against the judge, vectorised over games
# ----------------------------------------------------------------------------------------------------------


def _pair_logodds(logits: jax.Array, mine: jax.Array, other: jax.Array) -> jax.Array:
    """logit[mine] - logit[other]: the judge's log-odds for `mine`, softmax restricted to the two claims."""
    # logits (B, L, 10); mine, other (B,) -> (B, L)
    pick = lambda c: jnp.take_along_axis(logits, c[:, None, None], axis=-1)[..., 0]  # noqa: E731
    return pick(mine) - pick(other)


def _one_step_scores(graphdef, state, x, mask, mine, other):
    """Log-odds for `mine` after revealing each pixel next; and which pixels may be revealed."""
    # x, mask: (B, 64); mine, other: (B,) -> scores (B, 64), allowed (B, 64)
    cand = jnp.minimum(mask[:, None, :] + jnp.eye(N_PIXELS, dtype=x.dtype)[None], 1.0)  # (B, 64, 64)
    logits = _apply(graphdef, state, jnp.broadcast_to(x[:, None, :], cand.shape), cand)  # (B, 64, 10)
    allowed = (x > 0) & (mask == 0)
    return _pair_logodds(logits, mine, other), allowed


def _greedy(graphdef, state, x, mask, mine, other):
    scores, allowed = _one_step_scores(graphdef, state, x, mask, mine, other)
    return jnp.argmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)  # (B,)


def _lookahead(graphdef, state, x, mask, mine, other, *, signs: tuple[int, ...], width: int):
    """Minimax over the next len(signs) reveals (sign +1: this debater moves, -1: the opponent).

    Candidates are pooled at the root: the `width` pixels best for this debater and the `width` best for the
    opponent by one-step log-odds (or the 2*width best when only this debater moves). Every line of play over
    the pool is scored by the judge at its leaf in one batched call; repeated or forbidden pixels are moves
    the mover never picks (value -inf for this debater, +inf for the opponent).
    """
    scores, allowed = _one_step_scores(graphdef, state, x, mask, mine, other)  # (B, 64)
    if any(s < 0 for s in signs[1:]):
        _, mine_top = jax.lax.top_k(jnp.where(allowed, scores, -jnp.inf), width)
        _, theirs_top = jax.lax.top_k(jnp.where(allowed, -scores, -jnp.inf), width)
        pool = jnp.concatenate([mine_top, theirs_top], axis=-1)  # (B, 2w)
    else:
        _, pool = jax.lax.top_k(jnp.where(allowed, scores, -jnp.inf), 2 * width)  # (B, 2w)
    n_pool, depth = pool.shape[1], len(signs)
    lines = np.array(list(itertools.product(range(n_pool), repeat=depth)))  # (L, d) static
    pix = pool[:, lines]  # (B, L, d)
    batch, n_lines = pix.shape[:2]
    bad = ~jnp.take_along_axis(allowed, pix.reshape(batch, -1), axis=1).reshape(pix.shape)  # (B, L, d)
    for level in range(1, depth):
        bad = bad.at[..., level].set(
            bad[..., level] | (pix[..., :level] == pix[..., level : level + 1]).any(-1)
        )
    leaf = jnp.minimum(
        mask[:, None, :] + jax.nn.one_hot(pix, N_PIXELS, dtype=x.dtype).sum(2), 1.0
    )  # (B, L, 64)
    logits = _apply(graphdef, state, jnp.broadcast_to(x[:, None, :], leaf.shape), leaf)  # (B, L, 10)
    value = _pair_logodds(logits, mine, other)  # (B, L)
    sign = jnp.asarray(signs, dtype=value.dtype)  # (d,)
    first_bad = jnp.argmax(bad, axis=-1)  # (B, L)
    value = jnp.where(bad.any(-1), -sign[first_bad] * jnp.inf, value)
    value = value.reshape((batch,) + (n_pool,) * depth)
    for level in reversed(range(1, depth)):
        value = value.max(-1) if signs[level] > 0 else value.min(-1)
    return jnp.take_along_axis(pool, jnp.argmax(value, axis=-1)[:, None], axis=-1)[:, 0]  # (B,)


_greedy_jit = jax.jit(_greedy, static_argnums=0)
_lookahead_jit = jax.jit(_lookahead, static_argnums=0, static_argnames=("signs", "width"))


def _revealed(views) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values and reveal mask rebuilt from the transcript's verified evidence only."""
    values = np.zeros((len(views), N_PIXELS), np.float32)  # (B, 64)
    mask = np.zeros((len(views), N_PIXELS), np.float32)  # (B, 64)
    for b, v in enumerate(views):
        for turn in v.turns:
            for e in turn.evidence:
                if e.kind == "pixel" and e.verified:
                    i, value = e.content
                    values[b, i], mask[b, i] = value, 1.0
    return values, mask


class SearchDebater:
    """A batched engine agent that reveals one pixel per turn chosen by search against a fixed judge."""

    def __init__(self, judge: TrainedJudge, kind: str, *, depth: int = 3, width: int = 3, seed: int = 0):
        if kind not in AGENTS:
            raise ValueError(f"unknown debater {kind!r}; known: {', '.join(AGENTS)}")
        self.judge, self.kind, self.depth, self.width = judge, kind, depth, width
        self.rng = np.random.default_rng(seed)
        self._greedy = partial(_greedy_jit, judge.graphdef)
        self._lookahead = partial(_lookahead_jit, judge.graphdef)

    def __repr__(self) -> str:
        return f"SearchDebater({self.kind})"

    def __call__(self, views: list[P.AgentView]) -> list[P.Move]:
        x = np.stack([np.asarray(v.source, np.float32).reshape(-1) for v in views])  # (B, 64)
        _, mask = _revealed(views)  # (B, 64)
        if self.kind == "random":
            allowed = (x > 0) & (mask == 0)
            picks = [int(self.rng.choice(np.flatnonzero(a))) for a in allowed]
            return [P.Move(evidence=(p,)) for p in picks]
        mine = np.array([v.answers[v.answer] for v in views], np.int32)  # (B,)
        other = np.array([v.answers[1 - v.answer] for v in views], np.int32)  # (B,)
        picks = np.zeros(len(views), np.int64)
        if self.kind == "greedy":
            picks[:] = np.asarray(self._greedy(self.judge.state, x, mask, mine, other))
        else:
            # Lines of play depend on who moves next; group games by that pattern.
            groups: dict[tuple[int, ...], list[int]] = {}
            for b, v in enumerate(views):
                signs = (1, *(1 if a == v.answer else -1 for a in v.upcoming))[: self.depth]
                groups.setdefault(signs, []).append(b)
            for signs, idx in groups.items():
                i = np.array(idx)
                picks[i] = np.asarray(
                    self._lookahead(
                        self.judge.state, x[i], mask[i], mine[i], other[i], signs=signs, width=self.width
                    )
                )
        return [P.Move(evidence=(int(p),)) for p in picks]


# ----------------------------------------------------------------------------------------------------------
# Judges as engine callables
# ----------------------------------------------------------------------------------------------------------


def _two_claim_probability(logits: np.ndarray, views) -> np.ndarray:
    """P(answer A) with the judge's softmax restricted to the two claimed labels."""
    a = np.array([v.answers[0] for v in views])
    b = np.array([v.answers[1] for v in views])
    rows = np.arange(len(views))
    return 1.0 / (1.0 + np.exp(-(logits[rows, a] - logits[rows, b])))  # (B,)


def pixel_judge(judge: TrainedJudge) -> P.Judge:
    """Engine judge: sees only the pixels revealed in the transcript."""

    def decide(views: list[P.JudgeView]) -> np.ndarray:
        values, mask = _revealed(views)
        return _two_claim_probability(judge(values, mask), views)

    return decide


def prior_judge(class_counts: np.ndarray) -> P.Judge:
    """Blind engine judge: no evidence, so the likelier claim under the training class frequencies."""
    log_prior = np.log(np.asarray(class_counts, float) / np.sum(class_counts))  # (10,)

    def decide(views: list[P.JudgeView]) -> np.ndarray:
        return _two_claim_probability(np.tile(log_prior, (len(views), 1)), views)

    return decide


def oracle_judge(judge: TrainedJudge) -> P.Judge:
    """Oracle engine judge: reads the whole image (the source), which only the oracle protocol passes."""

    def decide(views: list[P.JudgeView]) -> np.ndarray:
        if any(v.source is None for v in views):
            raise ValueError("oracle judge called without the source: use protocol.oracle")
        x = np.stack([np.asarray(v.source, np.float32).reshape(-1) for v in views])
        return _two_claim_probability(judge(x, np.ones_like(x)), views)

    return decide


# ----------------------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------------------


def load_split(test_fraction: float, seed: int):
    """Digits scaled to [0, 1], split into train / held-out by a seeded permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # (1797, 64)
    y = digits.target.astype(np.int32)  # (1797,)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def liar_labels(
    judge: TrainedJudge, x: np.ndarray, y: np.ndarray, opts, rng: np.random.Generator
) -> list[list[int]]:
    """The wrong label(s) the liar claims on each image (see the module docstring)."""
    if opts.liar_label == "all":
        return [[c for c in range(N_CLASSES) if c != t] for t in y]
    if opts.liar_label == "random":
        return [
            [int(c if c < t else c + 1)]
            for t, c in zip(y, rng.integers(0, N_CLASSES - 1, len(y)), strict=True)
        ]
    keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), opts.confusable_reveals)
    xs = jnp.asarray(x)
    probs = np.mean(
        [
            np.asarray(jax.nn.softmax(judge.logits(judge.state, xs, random_reveal(k, xs, judge.k))))
            for k in keys
        ],
        axis=0,
    )  # (N, 10)
    probs[np.arange(len(y)), y] = -1.0
    return [[int(c)] for c in probs.argmax(-1)]


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    t_start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_split(opts.test_fraction, cfg.seed)
    if opts.judge_steps < 1:
        raise ValueError(f"experiment.judge_steps={opts.judge_steps} must be >= 1")
    _check(opts, int(min((x_train > 0).sum(1).min(), (x_test > 0).sum(1).min())))
    if opts.max_questions is not None:
        x_test, y_test = x_test[: opts.max_questions], y_test[: opts.max_questions]
    rng = np.random.default_rng(cfg.seed + 1)
    step = 0

    def logger(prefix):
        def log(loss, done):
            nonlocal step
            step += 1
            ctx.tracker.log({f"{prefix}/loss": loss, f"{prefix}/examples": done * opts.judge_batch}, step)

        return log

    rows: list[dict] = []
    summary: dict[str, float] = {}
    channel = P.PixelChannel(nonzero_only=True)
    blind_judge = prior_judge(np.bincount(y_train, minlength=N_CLASSES))
    full = train_judge(x_train, y_train, None, opts, cfg.seed + 1000, logger("judge_full"))
    table_lines = []

    def add(method, outcomes, common, **extra):
        rows.extend(P.protocol_rows("debate", outcomes, n_resamples=opts.bootstrap, seed=cfg.seed,
                                    method=method, **common, **extra))  # fmt: skip
        acc = float(np.mean([o.correct for o in outcomes]))
        summary[f"debate/accuracy/{method}/k{common['k']}"] = acc
        return acc

    for k in opts.pixels:
        t_k = time.perf_counter()
        judge = train_judge(x_train, y_train, k, opts, cfg.seed + k, logger(f"judge_k{k}"))
        common = {"k": k, "liar_label": opts.liar_label, "simultaneous": opts.simultaneous}

        # Irving et al.'s "judge accuracy": 10-way, from k random nonzero pixels of each held-out image.
        mask = np.asarray(random_reveal(jax.random.key(cfg.seed + 7 * k), jnp.asarray(x_test), k))
        hits = int((judge(x_test, mask).argmax(-1) == y_test).sum())
        rows.append(
            proportion_row("judge/accuracy_10way", hits, len(y_test), method="random pixels", **common)
        )
        summary[f"judge/accuracy_10way_k{k}"] = hits / len(y_test)

        questions = [
            P.Question(source=x_test[i], answers=(int(y_test[i]), lie), correct=0, id=f"{i}:{lie}")
            for i, lies in enumerate(liar_labels(judge, x_test, y_test, opts, rng))
            for lie in lies
        ]
        schedule = P.Schedule(moves=k, simultaneous=opts.simultaneous)
        budget = P.Budget(max_evidence=1)
        debaters = {
            name: SearchDebater(
                judge, name, depth=opts.search_depth, width=opts.search_width, seed=cfg.seed + 11 * k
            )
            for name in sorted(set(opts.agents) | {opts.consultant})
        }
        decide = pixel_judge(judge)

        accs = {"blind judge": add("blind judge", P.blind(questions, blind_judge), common, protocol="blind")}
        matches = []
        for honest in opts.agents:
            for liar in opts.agents:
                outcomes = P.debate(
                    questions, debaters[honest], debaters[liar], decide, channel, schedule, budget
                )
                wins = sum(o.correct for o in outcomes)
                matches.append(((honest, "honest"), (liar, "liar"), wins / len(outcomes), len(outcomes)))
                if honest == liar:
                    method = METHOD_NAMES[honest]
                    kind = "random" if honest == "random" else "debate"
                    accs[method] = add(
                        method, outcomes, common, protocol=kind, honest_agent=honest, liar_agent=liar
                    )
                    if honest != "random":
                        stats = P.evidence_stats(outcomes)
                        for name in ("turns", "evidence", "verified", "unverified", "repeated"):
                            row = {"metric": f"debate/evidence_{name}", "value": stats[name]}
                            row.update(ci_low=None, ci_high=None, n=len(outcomes), method=method, **common)
                            rows.append(row)
                else:
                    rows.append(proportion_row("debate/crossplay_honest_win_rate", wins, len(outcomes),
                                               method=f"{honest} vs {liar}", honest_agent=honest,
                                               liar_agent=liar, protocol="debate", **common))  # fmt: skip
        method = f"consultancy {opts.consultant}"
        outcomes = P.consultancy(questions, debaters[opts.consultant], decide, channel, schedule, budget)
        accs[method] = add(method, outcomes, common, protocol="consultancy")
        accs["oracle judge"] = add(
            "oracle judge", P.oracle(questions, oracle_judge(full)), common, protocol="oracle"
        )

        ratings = P.fit_elo(matches)
        for (agent, side), rating in sorted(ratings.items()):
            games = sum(m[3] for m in matches if (agent, side) in (m[0], m[1]))
            rows.append({"metric": "debate/elo", "value": rating, "ci_low": None, "ci_high": None, "n": games,
                         "agent": agent, "side": side, **common})  # fmt: skip
            summary[f"debate/elo/{agent}_{side}/k{k}"] = rating
        head = (
            f"k={k} ({time.perf_counter() - t_k:.0f} s)  10-way from random pixels {hits / len(y_test):.3f}"
        )
        table_lines.append(head + "  |  " + "  ".join(f"{m} {a:.3f}" for m, a in accs.items()))

    ctx.tracker.table("results", rows)
    summary["time/total_s"] = time.perf_counter() - t_start
    ctx.tracker.summary(summary)
    print(f"debate_digits: {len(y_test)} held-out images, liar label {opts.liar_label}, both answer orders")
    for line in table_lines:
        print(line)
    print(f"{summary['time/total_s']:.0f} s   run folder {ctx.run_dir}")


EXPERIMENT = Experiment(
    name="debate_digits",
    description="Sparse-pixel image debate on 8x8 digits (Irving et al. 2018): blind, consultancy, debate.",
    options=DigitsDebateOptions,
    run=run,
)


# Irving et al. 2018 on MNIST (judge accuracy from k random pixels -> honest win rate under debate).
PUBLISHED_MNIST = {4: {"random pixels": 0.482, "debate": 0.852}, 6: {"random pixels": 0.594, "debate": 0.889}}


def seed_table(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per method and k over runs (seeds): mean of the per-run values, and a Wilson 95% interval
    on the pooled games (every run's games counted once), with the number of runs and games."""
    acc = results[results["metric"].isin(["debate/accuracy", "judge/accuracy_10way"])].copy()
    if acc.empty:
        raise ValueError("no debate_digits accuracy rows in these results (is this a debate_digits run?)")
    acc["what"] = acc["metric"].map({"debate/accuracy": "two claims", "judge/accuracy_10way": "10-way"})
    acc["hits"] = (acc["value"] * acc["n"]).round().astype(int)
    rows = []
    for (what, method, k), g in acc.groupby(["what", "method", "k"], sort=False):
        lo, hi = wilson_interval(int(g["hits"].sum()), int(g["n"].sum()))
        rows.append({"what": what, "method": method, "k": int(k), "mean": g["value"].mean(), "ci_low": lo,
                     "ci_high": hi, "seed_sd": g["value"].std(ddof=1) if len(g) > 1 else float("nan"),
                     "runs": g["run"].nunique(), "games": int(g["n"].sum())})  # fmt: skip
    return pd.DataFrame(rows)
