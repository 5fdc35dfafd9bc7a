"""Sparse-pixel image debate (Irving, Christiano & Amodei 2018, §3.1) on scikit-learn's 8x8 digits.

    oversight experiment=debate_digits                 # 2 and 3 pixels a side, about 2-3 min on 2 CPU cores
    oversight -m experiment=debate_digits seed=0,1,2   # the 3-seed table

The task is `oversight.tasks.digits`: held-out images, each with its true label and a false one. The
evidence budget is `evidence_per_side` pixels a debater reveals; the judge sees k = 2 x that (a consultant
reveals all k), Irving et al.'s k = 4 and 6. The judge is a small JAX/Flax NNX MLP that sees k revealed
pixels (values and a reveal mask), trained on random k-pixel reveals of the training split, as Irving et al.
trained theirs on random MNIST reveals. The honest debater claims the true label and the liar another one;
they alternately reveal pixels (only nonzero pixels, as in the paper) through the protocols' `PixelChannel`,
and the judge, restricted to the two claims, picks one. The honest win rate is the judge's accuracy under
debate.

Debaters search against the judge: `greedy` reveals the pixel that most raises the judge's log-odds for its
claim; `lookahead` runs a minimax over the next `search_depth` reveals, restricted to the `search_width` best
pixels for each side at the root. Both are vectorised over all games with jax.vmap-style batching under jit.

The `learned` debater is a policy instead of a search: a small NNX MLP (`PixelPolicy`) that sees what a
debater sees (the whole image, the reveals so far, its claim, the opponent's claim, its answer's position
and the moves left to each side) and outputs a distribution over the 64 pixels, zero and revealed pixels
masked out. One network per k plays both sides and is trained by self-play REINFORCE (leave-one-out
baseline over repeated plays of a game; the core's `policy_gradient_loss` on-policy) with the fixed judge's
verdict as the zero-sum reward, on the judge's training images, with the whole game vectorised under jit;
it plays its mode on the held-out images. No imitation warm-start: everything it knows comes from RL
against the judge.

The liar's label: by default the *most confusable* wrong label of each image (the wrong class the k-pixel
judge rates highest on average over random reveals): the strongest fixed lie, committed to before the game
(Irving et al.'s precommit setting). `liar_label=all` plays every wrong label (9 games per image), `random`
one at random.

Protocols on the same questions, each with both answer orders (honest first and liar first):
blind judge (class prior, no pixels), random pixels (k random nonzero pixels = random vs random debate),
consultancy (one look-ahead consultant, honest or dishonest, both counted), debate (a cross-play tournament
of random / greedy / look-ahead / learned debaters; Elo per agent and side fitted from it), oracle judge (a classifier
that sees the whole image). Also the 10-way accuracy of the judge from k random pixels, the number Irving et
al. report as "judge accuracy" (59.4% at 6 pixels, 48.2% at 4 on MNIST).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

from oversight import protocols as P
from oversight.registry import Experiment, RunContext
from oversight.settings import check_fields, setting
from oversight.stats import proportion_row, wilson_interval
from oversight.tasks.digits import N_CLASSES, N_PIXELS, load_split, make_questions
from oversight.tracking.progress import progress
from oversight.training.loop import TrainConfig, make_optimizer
from oversight.training.policy_gradient import policy_gradient_loss

SEARCH_AGENTS = ("random", "greedy", "lookahead")
AGENTS = (*SEARCH_AGENTS, "learned")
LIAR_LABELS = ("confusable", "random", "all")
METHOD_NAMES = {"random": "random pixels", "greedy": "debate greedy", "lookahead": "debate look-ahead",
                "learned": "debate learned"}  # fmt: skip


@dataclass
class DigitsDebateOptions:
    # Evidence budgets in pixels per side: each debater reveals this many, the judge sees k = 2 x as many
    # (a consultant reveals all k); one judge is trained per budget.
    evidence_per_side: list[int] = setting(factory=lambda: [2, 3], ge=1)
    # Share of the 1797 images held out for the debates (the judge never trains on them).
    test_fraction: float = setting(0.25, gt=0, lt=1)
    # Use only the first N held-out images (None: all); for quick tests.
    max_questions: int | None = setting(None, ge=1)
    # Judge MLP width (two hidden layers) and training on random k-pixel reveals.
    judge_hidden: int = setting(128, ge=1)
    judge_steps: int = setting(3000, ge=1)
    judge_batch: int = setting(128, ge=1)
    judge_learning_rate: float = setting(0.001, gt=0)
    # The liar's claimed label: confusable (the judge's likeliest wrong class), random, or all (9 games).
    liar_label: str = setting("confusable", choices=LIAR_LABELS)
    # Random reveals per image used to find the most confusable wrong label.
    confusable_reveals: int = setting(16, ge=1)
    # Look-ahead search: minimax over the next `search_depth` reveals, among the `search_width` best pixels
    # for each side at the root.
    search_depth: int = setting(3, ge=1)
    search_width: int = setting(3, ge=1)
    # Debaters of the cross-play tournament (every honest agent meets every liar).
    agents: list[str] = setting(factory=lambda: list(AGENTS), choices=AGENTS)
    # The consultant: one of the debaters (a search, or the learned policy).
    consultant: str = setting("lookahead", choices=AGENTS)
    # Learned debater (`learned`): an MLP pixel policy (two hidden layers of `learned_hidden`), one per k,
    # trained by self-play REINFORCE against the fixed judge on the training images: `learned_steps` steps
    # of `learned_batch` images, each game played `learned_group` times (leave-one-out baseline), AdamW at
    # `learned_learning_rate` (cosine decay), entropy bonus `learned_entropy`; `learned_consultancy` of the
    # training games are consultancies (so it can consult), the rest debates in both orders.
    learned_hidden: int = setting(128, ge=1)
    learned_steps: int = setting(1000, ge=0)
    learned_batch: int = setting(128, ge=1)
    learned_group: int = setting(4, ge=2)  # the baseline of a game is its other plays' mean reward
    learned_learning_rate: float = setting(0.003, gt=0)
    learned_entropy: float = setting(0.01, ge=0)
    learned_consultancy: float = setting(0.25, ge=0, le=1)
    # Both debaters reveal at once each round, each blind to the other's pixel of that round.
    simultaneous: bool = False
    # Bootstrap resamples for the log-score / ECE / Brier intervals.
    bootstrap: int = setting(1000, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "experiment.")
        if self.search_depth > self.search_width:
            raise ValueError(
                f"experiment.search_depth={self.search_depth} must be in 1..search_width={self.search_width}"
                " (the pool must hold enough distinct pixels for a full line of play)"
            )


def _check_budgets(opts: DigitsDebateOptions, min_nonzero: int) -> None:
    for n in opts.evidence_per_side:
        if 2 * n > min_nonzero:
            raise ValueError(
                f"experiment.evidence_per_side: {n} pixels a side is outside 1..{min_nonzero // 2} (the judge"
                f" sees twice as many; the fewest nonzero pixels of an image are {min_nonzero})"
            )


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
    bar = progress(opts.judge_steps, desc=f"judge k={'all' if k is None else k}")
    while done < opts.judge_steps:
        key, sub = jax.random.split(key)
        state, opt_state, loss = _train_chunk(graphdef, state, opt_state, xs, ys, sub, **hyper)
        done += chunk
        bar.update(chunk)
        if log is not None:
            log(float(loss), done)
    bar.close()
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
        if kind not in SEARCH_AGENTS:
            raise ValueError(f"unknown search debater {kind!r}; known: {', '.join(SEARCH_AGENTS)}")
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
# Learned debaters: a pixel policy trained by self-play RL with the judge's verdict as reward
# ----------------------------------------------------------------------------------------------------------

# Image, revealed values, reveal mask; own and opponent's claim; own answer's position (A/B); moves left to
# this debater and to its opponent after this one.
N_FEATURES = 3 * N_PIXELS + 2 * N_CLASSES + 2 + 2
MASKED = -1e9  # logit of a pixel that may not be revealed (finite, so 0 * log p stays 0 in the entropy)
# Rows of the rollout's move table, by game type: who moves at each turn (0 honest, 1 liar).
GAME_TYPES = ("debate honest first", "debate liar first", "consultancy honest", "consultancy dishonest")


def policy_features(x, values, mask, mine, other, answer, own_left, opp_left) -> jax.Array:
    """What a debater sees, as one vector per game (it knows the image; it is not told the true label)."""
    # x, values, mask: (B, 64); mine, other: (B,) labels; answer: (B,) 0/1; own_left, opp_left: (B,)
    return jnp.concatenate(
        [
            x, values * mask, mask,
            jax.nn.one_hot(mine, N_CLASSES), jax.nn.one_hot(other, N_CLASSES), jax.nn.one_hot(answer, 2),
            jnp.stack([own_left, opp_left], axis=-1).astype(x.dtype),
        ],
        axis=-1,
    )  # fmt: skip


class PixelPolicy(nnx.Module):
    """Debater policy: logits over the 64 pixels to reveal next; pixels that are zero or already revealed are
    masked out (never chosen). Same shape of MLP as the judge."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(N_FEATURES, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, N_PIXELS, rngs=rngs)

    def __call__(self, features: jax.Array, allowed: jax.Array) -> jax.Array:
        # features (B, N_FEATURES); allowed (B, 64) bool -> logits (B, 64)
        h = nnx.relu(self.l1(features))
        h = nnx.relu(self.l2(h))
        return jnp.where(allowed, self.out(h), MASKED)


def _policy_logits(graphdef, state, x, values, mask, mine, other, answer, own_left, opp_left):
    allowed = (x > 0) & (mask == 0)
    feats = policy_features(x, values, mask, mine, other, answer, own_left, opp_left)
    return nnx.merge(graphdef, state)(feats, allowed)


_policy_logits_jit = jax.jit(_policy_logits, static_argnums=0)


@partial(jax.jit, static_argnums=0)
def _init_policy_state(hidden, key):
    return nnx.split(PixelPolicy(hidden, rngs=nnx.Rngs(key)))[1]


def init_policy(hidden: int, seed: int):
    """Graph and freshly initialised weights of a PixelPolicy (initialised under jit, like the judge)."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: PixelPolicy(hidden, rngs=nnx.Rngs(0))))
    return graphdef, _init_policy_state(hidden, jax.random.key(seed))


def _play_batch(pgraph, pstate, jgraph, jstate, x, claims, movers, answer0, key, *, kinds, sample):
    """Plays B reveal games at once, turn by turn (the engine's rules, vectorised).

    x: (B, 64) images; claims: (B, 2) [honest claim, liar claim]; movers: (B, k) who moves at each turn (0
    honest, 1 liar); answer0: (B,) the honest claim's answer position (the liar's is the other). `kinds`
    (honest agent, liar agent), each "policy", "greedy" or "random"; `sample`: the policy samples its pixel
    (training) or takes the likeliest (evaluation). Returns the final reveal mask (B, 64), the policy's
    log-probabilities of its moves and their entropies (B, k) (0 for other agents' moves), and the judge's
    probability on the honest claim, softmax restricted to the two claims (B,).
    """
    k = movers.shape[1]
    mask = jnp.zeros_like(x)
    logps, ents = [], []
    keys = jax.random.split(key, k)
    for t in range(k):  # k is static and small: unrolled
        side = movers[:, t]  # (B,)
        mine = jnp.where(side == 0, claims[:, 0], claims[:, 1])
        other = jnp.where(side == 0, claims[:, 1], claims[:, 0])
        answer = jnp.where(side == 0, answer0, 1 - answer0)
        own_left = (movers[:, t + 1 :] == side[:, None]).sum(-1)
        opp_left = (k - t - 1) - own_left
        allowed = (x > 0) & (mask == 0)
        k_pol, k_rand = jax.random.split(keys[t])
        picks, logp, ent = {}, jnp.zeros(x.shape[0]), jnp.zeros(x.shape[0])
        if "policy" in kinds:
            logits = _policy_logits(
                pgraph, pstate, x, x * mask, mask, mine, other, answer, own_left, opp_left
            )
            logp_all = jax.nn.log_softmax(logits)  # (B, 64)
            pick = jax.random.categorical(k_pol, logits) if sample else jnp.argmax(logits, axis=-1)
            picks["policy"] = pick
            logp = jnp.take_along_axis(logp_all, pick[:, None], axis=-1)[:, 0]
            ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
        if "greedy" in kinds:
            picks["greedy"] = _greedy(jgraph, jstate, x, mask, mine, other)
        if "random" in kinds:
            picks["random"] = jax.random.categorical(k_rand, jnp.where(allowed, 0.0, MASKED))
        pick = jnp.where(side == 0, picks[kinds[0]], picks[kinds[1]])  # (B,)
        by_policy = jnp.where(side == 0, kinds[0] == "policy", kinds[1] == "policy")
        logps.append(jnp.where(by_policy, logp, 0.0))
        ents.append(jnp.where(by_policy, ent, 0.0))
        mask = jnp.maximum(mask, jax.nn.one_hot(pick, N_PIXELS, dtype=x.dtype))
    logits = _apply(jgraph, jstate, x, mask)  # (B, 10)
    p_honest = jax.nn.sigmoid(_pair_logodds(logits[:, None], claims[:, 0], claims[:, 1])[:, 0])  # (B,)
    return mask, jnp.stack(logps, 1), jnp.stack(ents, 1), p_honest


def _game_setup(key, ys, lies, batch, k, consultancy, random_lies):
    """A batch of training games: images, claims, move table and answer positions (B,) ... (B, k)."""
    k_idx, k_type, k_ans, k_lie = jax.random.split(key, 4)
    idx = jax.random.randint(k_idx, (batch,), 0, ys.shape[0])
    truth = ys[idx]
    lie = (
        (truth + jax.random.randint(k_lie, (batch,), 1, N_CLASSES)) % N_CLASSES if random_lies else lies[idx]
    )
    # Game types (GAME_TYPES): debates in both orders, consultancies honest and dishonest.
    weights = jnp.array([1 - consultancy, 1 - consultancy, consultancy, consultancy]) / 2
    kind = jax.random.choice(k_type, 4, (batch,), p=weights)
    turn = np.arange(k) % 2
    table = jnp.asarray(np.stack([turn, 1 - turn, np.zeros(k, int), np.ones(k, int)]), jnp.int32)  # (4, k)
    # The first debater sits in seat 0 and argues answer A; a consultant's answer is A or B at random.
    answer0 = jnp.where(kind == 0, 0, jnp.where(kind == 1, 1, jax.random.randint(k_ans, (batch,), 0, 2)))
    return idx, jnp.stack([truth, lie], axis=-1), table[kind], answer0, kind


def _rl_optimizer(learning_rate, steps):
    return make_optimizer(
        TrainConfig(steps=steps, learning_rate=learning_rate, warmup_steps=0, weight_decay=0.0)
    )


@partial(
    jax.jit,
    static_argnames=("pgraph", "jgraph", "steps", "total_steps", "batch", "group", "k", "learning_rate",
                     "entropy", "consultancy", "random_lies"),
)  # fmt: skip
def _rl_chunk(pgraph, jgraph, pstate, opt_state, jstate, xs, ys, lies, key, *, steps, total_steps, batch,
              group, k, learning_rate, entropy, consultancy, random_lies):  # fmt: skip
    """`steps` self-play REINFORCE steps in one scan (one program for every chunk of a run).

    Each step draws `batch` training games and plays each `group` times with the policy on both sides.
    Reward: the judge's probability on the honest claim p for the honest side, 1 - p for the liar. It is
    zero-sum (one advantage serves both sides, with opposite signs), bounded (low-variance gradients), and
    what the verdict thresholds; a log score would put most of the gradient on games already lost with a
    saturated judge. REINFORCE rather than PPO: a game is a few categorical moves and a rollout costs a few
    small forward passes, so fresh on-policy games every step are cheaper than PPO's sample reuse and need
    no importance ratios or clipping. Baseline: the mean reward of the *other* plays of the same game
    (leave-one-out, Kool et al. 2019), a per-image baseline that removes how easy the image is from the
    advantage without a learned value network.
    """
    tx = _rl_optimizer(learning_rate, total_steps)

    def loss_fn(pstate, x, claims, movers, answer0, key):
        _, logp, ent, p = _play_batch(pgraph, pstate, jgraph, jstate, x, claims, movers, answer0, key,
                                      kinds=("policy", "policy"), sample=True)  # fmt: skip
        r = p.reshape(group, -1)  # (G, n): plays of one game share a column
        baseline = (r.sum(0, keepdims=True) - r) / (group - 1)
        adv = (r - baseline).reshape(-1)  # honest side's advantage (B,)
        sign = jnp.where(movers == 0, 1.0, -1.0)  # (B, k): the liar's advantage is -adv
        pg_loss, _ = policy_gradient_loss(logp, adv[:, None] * sign)  # on-policy: REINFORCE
        loss = pg_loss - entropy * ent.mean()
        return loss, (p, ent)

    def step(carry, key):
        pstate, opt_state = carry
        k_game, k_play = jax.random.split(key)
        idx, claims, movers, answer0, kind = _game_setup(k_game, ys, lies, batch, k, consultancy, random_lies)
        tile = lambda a: jnp.tile(a, (group,) + (1,) * (a.ndim - 1))  # noqa: E731
        (loss, (p, ent)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            pstate, tile(xs[idx]), tile(claims), tile(movers), tile(answer0), k_play
        )
        updates, opt_state = tx.update(grads, opt_state, pstate)
        pstate = optax.apply_updates(pstate, updates)
        kind, win = tile(kind), (p > 0.5).astype(jnp.float32)
        debate = (kind < 2).astype(jnp.float32)
        metrics = {
            "loss": loss,
            "honest_reward": p.mean(),
            "debate_honest_win_rate": jnp.sum(win * debate) / jnp.maximum(debate.sum(), 1.0),
            "consultancy_accuracy": jnp.sum(win * (1 - debate)) / jnp.maximum((1 - debate).sum(), 1.0),
            "entropy": ent.sum() / jnp.maximum((ent > 0).sum(), 1),
        }
        return (pstate, opt_state), metrics

    (pstate, opt_state), metrics = jax.lax.scan(step, (pstate, opt_state), jax.random.split(key, steps))
    return pstate, opt_state, metrics


@partial(jax.jit, static_argnames=("pgraph", "jgraph", "kinds"))
def _play_eval(pgraph, pstate, jgraph, jstate, x, claims, movers, answer0, key, *, kinds):
    return _play_batch(
        pgraph, pstate, jgraph, jstate, x, claims, movers, answer0, key, kinds=kinds, sample=False
    )


class LearnedDebater:
    """A batched engine agent: reveals the pixel its PixelPolicy rates highest (the policy's mode)."""

    def __init__(self, graphdef, state, name: str = "learned"):
        self.graphdef, self.state, self.name = graphdef, state, name

    def __repr__(self) -> str:
        return f"LearnedDebater({self.name})"

    def __call__(self, views: list[P.AgentView]) -> list[P.Move]:
        x = np.stack([np.asarray(v.source, np.float32).reshape(-1) for v in views])  # (B, 64)
        values, mask = _revealed(views)  # (B, 64)
        mine = np.array([v.answers[v.answer] for v in views], np.int32)  # (B,)
        other = np.array([v.answers[1 - v.answer] for v in views], np.int32)  # (B,)
        answer = np.array([v.answer for v in views], np.int32)  # (B,)
        own_left = np.array([sum(a == v.answer for a in v.upcoming) for v in views], np.int32)  # (B,)
        opp_left = np.array([len(v.upcoming) for v in views], np.int32) - own_left  # (B,)
        logits = _policy_logits_jit(
            self.graphdef, self.state, x, values, mask, mine, other, answer, own_left, opp_left
        )
        return [P.Move(evidence=(int(p),)) for p in np.asarray(jnp.argmax(logits, axis=-1))]

    def win_rate(self, judge: TrainedJudge, x, truth, lies, k: int, kinds=("policy", "greedy"), seed=0):
        """Honest win rate of sequential debates on these images, each in both orders, between `kinds`
        (honest, liar) agents: the vectorised game, for training curves and tests (the engine plays the
        reported protocols)."""
        n = len(truth)
        turn = np.arange(k) % 2
        movers = np.concatenate([np.tile(turn, (n, 1)), np.tile(1 - turn, (n, 1))]).astype(np.int32)
        answer0 = np.repeat(np.array([0, 1], np.int32), n)  # the first debater argues answer A
        claims = np.tile(np.stack([truth, lies], axis=-1).astype(np.int32), (2, 1))
        x2 = np.tile(np.asarray(x, np.float32), (2, 1))
        p = _play_eval(self.graphdef, self.state, judge.graphdef, judge.state, x2, claims, movers, answer0,
                       jax.random.key(seed), kinds=tuple(kinds))[3]  # fmt: skip
        return float(np.mean(np.asarray(p) > 0.5))


def train_learned_debater(
    judge: TrainedJudge, x, y, lies, opts: DigitsDebateOptions, seed: int, log=None, monitor=None
) -> LearnedDebater:
    """Self-play RL of a fresh PixelPolicy against the fixed `judge` on training images `x`, labels `y`.

    `lies`: the liar's claim per image (`liar_label=confusable`), or None for a random wrong label per game.
    `log(metrics, step)` gets each step's training metrics; `monitor(debater, step)` is called before
    training and after each chunk (e.g. to measure win rates against a fixed opponent).
    """
    graphdef, state = init_policy(opts.learned_hidden, seed)
    steps = opts.learned_steps
    opt_state = _rl_optimizer(opts.learned_learning_rate, max(steps, 1)).init(state)
    xs, ys = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    lies_arr = jnp.asarray(lies if lies is not None else y, jnp.int32)
    chunk = min(100, max(steps, 1))  # steps per jitted scan; learned_steps rounds up to a multiple
    hyper = {
        "steps": chunk, "total_steps": max(steps, 1), "batch": opts.learned_batch, "group": opts.learned_group,
        "k": judge.k, "learning_rate": opts.learned_learning_rate, "entropy": opts.learned_entropy,
        "consultancy": opts.learned_consultancy, "random_lies": lies is None,
    }  # fmt: skip
    debater = LearnedDebater(graphdef, state)
    if monitor is not None:
        monitor(debater, 0)
    key = jax.random.key(seed)
    done = 0
    bar = progress(steps, desc=f"learned debater k={judge.k}")
    while done < steps:
        key, sub = jax.random.split(key)
        state, opt_state, metrics = _rl_chunk(graphdef, judge.graphdef, state, opt_state, judge.state, xs, ys,
                                              lies_arr, sub, **hyper)  # fmt: skip
        debater.state = state
        if log is not None:
            for i, row in enumerate(zip(*(np.asarray(v) for v in metrics.values()), strict=True)):
                log(dict(zip(metrics, map(float, row), strict=True)), done + i + 1)
        done += chunk
        bar.update(chunk)
        if monitor is not None:
            monitor(debater, done)
    bar.close()
    return debater


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


def learned_stage(judge, x_train, y_train, k, opts, seed, track, summary) -> LearnedDebater:
    """Trains the learned debater for budget k on the training images; logs its curves under `learned_k{k}/`:
    the self-play training metrics every step, and every chunk its honest and liar win rates against the
    greedy debater on a fixed set of training images (vectorised game, both orders)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 13 * k)
    lies = None
    if opts.liar_label == "confusable":
        lies = np.array([c for (c,) in liar_labels(judge, x_train, y_train, opts, rng)], np.int32)
    probe = rng.permutation(len(y_train))[:128]
    probe_lies = (
        lies[probe] if lies is not None else (y_train[probe] + rng.integers(1, N_CLASSES, 128)) % N_CLASSES
    )
    curve: dict[int, dict[str, float]] = {}

    def monitor(debater, done):
        args = (judge, x_train[probe], y_train[probe], probe_lies, k)
        curve[done] = {
            f"learned_k{k}/honest_win_vs_greedy": debater.win_rate(*args, kinds=("policy", "greedy")),
            f"learned_k{k}/liar_win_vs_greedy": 1 - debater.win_rate(*args, kinds=("greedy", "policy")),
            f"learned_k{k}/honest_win_vs_random": debater.win_rate(*args, kinds=("policy", "random")),
        }
        track({**curve[done], f"learned_k{k}/step": done})

    def log(metrics, done):
        track({f"learned_k{k}/{m}": v for m, v in metrics.items()} | {f"learned_k{k}/step": done})

    debater = train_learned_debater(
        judge, x_train, y_train, lies, opts, seed * 1_000_003 + 17 * k, log=log, monitor=monitor
    )
    first, last = curve[min(curve)], curve[max(curve)]
    for name in first:
        summary[f"{name}/before"], summary[f"{name}/after"] = first[name], last[name]
    summary[f"time/learned_k{k}_s"] = time.perf_counter() - t0
    return debater


def run(ctx: RunContext) -> None:
    cfg, opts = ctx.cfg, ctx.options
    t_start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_split(opts.test_fraction, cfg.seed)
    _check_budgets(opts, int(min((x_train > 0).sum(1).min(), (x_test > 0).sum(1).min())))
    if opts.max_questions is not None:
        x_test, y_test = x_test[: opts.max_questions], y_test[: opts.max_questions]
    rng = np.random.default_rng(cfg.seed + 1)
    step = 0

    def track(metrics: dict) -> None:
        """One increasing step count over every stage of the run (trackers need monotonic steps)."""
        nonlocal step
        step += 1
        ctx.tracker.log(metrics, step)

    def logger(prefix):
        def log(loss, done):
            track({f"{prefix}/loss": loss, f"{prefix}/examples": done * opts.judge_batch})

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

    for n in opts.evidence_per_side:
        k = 2 * n  # pixels the judge sees, Irving et al.'s k
        t_k = time.perf_counter()
        judge = train_judge(x_train, y_train, k, opts, cfg.seed + k, logger(f"judge_k{k}"))
        common = {"k": k, "evidence_per_side": n, "evidence_unit": "pixel", "liar_label": opts.liar_label,
                  "simultaneous": opts.simultaneous}  # fmt: skip

        # Irving et al.'s "judge accuracy": 10-way, from k random nonzero pixels of each held-out image.
        mask = np.asarray(random_reveal(jax.random.key(cfg.seed + 7 * k), jnp.asarray(x_test), k))
        hits = int((judge(x_test, mask).argmax(-1) == y_test).sum())
        rows.append(
            proportion_row("judge/accuracy_10way", hits, len(y_test), method="random pixels", **common)
        )
        summary[f"judge/accuracy_10way_k{k}"] = hits / len(y_test)

        questions = make_questions(x_test, y_test, liar_labels(judge, x_test, y_test, opts, rng))
        schedule = P.Schedule(moves=k, simultaneous=opts.simultaneous)
        budget = P.Budget(max_evidence=1)  # one pixel a turn: n turns a debater, k turns a consultant
        debaters = {
            name: SearchDebater(
                judge, name, depth=opts.search_depth, width=opts.search_width, seed=cfg.seed + 11 * k
            )
            for name in sorted(set(opts.agents) | {opts.consultant})
            if name != "learned"
        }
        if "learned" in set(opts.agents) | {opts.consultant}:
            debaters["learned"] = learned_stage(judge, x_train, y_train, k, opts, cfg.seed, track, summary)
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
