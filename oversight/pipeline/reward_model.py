"""The reward-model stages of RLHF: comparisons ranked by a simulated labeller, and a reward model trained on
them, measured against gold and normalised on the policy's samples before RL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oversight.overseers import GoldOverseer, HumanCapacity, RankingCollector, SimulatedHuman
from oversight.pipeline.context import RunContext
from oversight.pipeline.stages import Trainer, round_up
from oversight.sampling.generate import left_pad
from oversight.settings import setting
from oversight.stats import proportion_row
from oversight.training.batched import batch_rows, map_batches
from oversight.training.loop import TrainConfig
from oversight.training.reward_model import (
    RewardParams,
    fit_normalization,
    fold_normalization,
    pack_rankings,
    ranking_rewards,
    reward_model_loss,
    reward_model_metrics,
    reward_scores,
)

# Rows per call when scoring samples: the sets scored (normalisation, best-of-N) differ in size, one shape
# serves them all.
_SCORE_ROWS = 256


@dataclass
class ComparisonsConfig:
    # Responses per prompt that the labeller ranks (K).
    k: int = setting(4, ge=2)
    # Prompts whose K policy samples are ranked.
    prompts: int = setting(1024, ge=2)
    # Fraction of those rankings held out to measure the reward model.
    heldout_fraction: float = setting(0.25, gt=0, lt=1)


@dataclass
class RewardModelConfig:
    # Its training stage (`batch_size` rankings per step, at most the number of rankings).
    train: TrainConfig = field(default_factory=TrainConfig)
    # Generative reward model: the score adds the model's own log-likelihood of the response (it starts as the
    # SFT policy's), trained with the head by the ranking loss (`reward_scores`).
    generative: bool = False
    # Normalise the reward to std 1 on the policy's samples as well as mean 0.
    normalize_std: bool = True


class Comparisons:
    """K-way rankings of policy samples by a simulated labeller: the training rankings, and held-out rankings
    packed twice (in the labeller's order and in gold's) to measure a reward model against both."""

    def __init__(
        self,
        ctx: RunContext,
        cfg: ComparisonsConfig,
        labeller: HumanCapacity,
        problems: list,
        texts: list[str],
        seq_len: int,
        generative: bool,
    ):
        """`texts`: K samples per problem, problem-major; `seq_len`: the longest prompt + response."""
        self.ctx, self.k, self.generative = ctx, cfg.k, generative
        tok, task, k = ctx.tokenizer, ctx.task, cfg.k
        self.labeller = RankingCollector(
            SimulatedHuman(labeller, task, seed=ctx.seed("labeller")), k, seed=ctx.seed("labeller/ties")
        )
        rankings = self.labeller.collect(problems, [texts[i * k : (i + 1) * k] for i in range(len(problems))])
        n_heldout = max(1, int(round(cfg.heldout_fraction * len(rankings))))
        self.train_rankings, heldout = rankings[:-n_heldout], rankings[-n_heldout:]
        self.train_problems, heldout_problems = problems[:-n_heldout], problems[-n_heldout:]
        self.length = round_up(seq_len + 1)
        self.prompt_tokens = {p.prompt: tok.prompt_ids(p.prompt) for p in problems}

        # Held-out: the same responses in the labeller's order and in gold's order.
        self.heldout_labeller = self.pack(heldout)
        gold = GoldOverseer(task, seed=ctx.seed("gold"))
        judgements = [
            gold.judge(p, list(r.responses)) for p, r in zip(heldout_problems, heldout, strict=True)
        ]
        self.heldout_gold = self.pack(heldout, judgements)
        # The labeller's forced choice (its ranking, ties broken at random) on the pairs gold orders strictly.
        agree = pairs = 0
        for r, j in zip(heldout, judgements, strict=True):
            position = {i: pos for pos, i in enumerate(r.order)}
            for a in range(k):
                for b in range(a + 1, k):
                    if j.scores[a] != j.scores[b]:
                        pairs += 1
                        agree += (j.scores[a] > j.scores[b]) == (position[a] < position[b])
        ctx.results.add(proportion_row("labeller/gold_agreement", agree, pairs))
        ranks = np.asarray(self.train_data()["ranks"])
        ctx.tracker.summary(
            {
                "labeller/train_pairs": int(np.sum(ranks[:, :, None] < ranks[:, None, :])),
                "labeller/gold_agreement": agree / max(pairs, 1),
            }
        )

    def _encode(self, ranking, order=None) -> tuple[list[list[int]], list[float]]:
        tok = self.ctx.tokenizer
        order = ranking.order if order is None else order
        return [[*tok.encode(ranking.responses[i]), tok.eos_id] for i in order], [
            ranking.scores[i] for i in order
        ]

    def pack(self, rankings, judgements=None) -> dict[str, np.ndarray]:
        """Reward-model rows of rankings, each response in the labeller's order (ties marked), or with
        `judgements` in their order and with their scores."""
        if judgements is None:
            encoded = [self._encode(r) for r in rankings]
        else:
            encoded = [
                (self._encode(r, j.ranking)[0], [float(j.scores[i]) for i in j.ranking])
                for r, j in zip(rankings, judgements, strict=True)
            ]
        return pack_rankings(
            [self.prompt_tokens[r.prompt] for r in rankings],
            [e[0] for e in encoded],
            self.k,
            self.length,
            self.ctx.tokenizer.pad_id,
            scores=[e[1] for e in encoded],
            generative=self.generative,
        )

    def train_data(self) -> dict[str, np.ndarray]:
        return self.pack(self.train_rankings)

    def add_rankings(self, texts: list[str]) -> None:
        """Rank K new samples (problem-major) of every training comparison prompt and keep them with the rest."""
        k = self.k
        groups = [texts[i * k : (i + 1) * k] for i in range(len(self.train_problems))]
        self.train_rankings = self.train_rankings + self.labeller.collect(self.train_problems, groups)


class RewardModel:
    """A reward model on the policy's architecture (`graphdef`, with a `reward` head), trained on comparisons in
    stages; `params` (`RewardParams`) score with its current normalisation."""

    def __init__(
        self, ctx: RunContext, cfg: RewardModelConfig, graphdef, comparisons: Comparisons, prompt_len: int
    ):
        self.ctx, self.cfg, self.graphdef, self.comparisons = ctx, cfg, graphdef, comparisons
        self.prompt_len = prompt_len
        self.model: nnx.Module | None = None
        self.params: RewardParams | None = None
        generative = cfg.generative

        @jax.jit
        def rankings_rewards(params, batch):  # (B, K, T) -> (B, K)
            return ranking_rewards(nnx.merge(graphdef, params), batch)

        @jax.jit
        def response_rewards(params: RewardParams, prompt, prompt_mask, response, response_mask):  # -> (B,)
            rm = nnx.merge(graphdef, params.params)
            tokens = jnp.concatenate([prompt, response], axis=1)
            mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
            scored = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1)
            return reward_scores(rm, tokens, mask, "reward", scored if generative else None, params.lm_scale)

        self._rankings_rewards, self._response_rewards = rankings_rewards, response_rewards

    def _rows(self, params, seq_len: int, seqs_per_row: int = 1) -> int:
        """Rows per forward pass of a scoring pass (`batch_rows`); the LM head only for a generative model."""
        cfg = nnx.merge(self.graphdef, params).config
        return batch_rows(cfg, seq_len, seqs_per_row, logits=self.cfg.generative)

    def heldout_metrics(self, params) -> dict[str, float]:
        """Accuracy, ECE and pair counts on the held-out rankings, ordered by gold and by the labeller (the
        rewards in batches of rankings, the metrics over all of them)."""
        ctx, out = self.ctx, {}
        for name, data in (
            ("gold", self.comparisons.heldout_gold),
            ("labeller", self.comparisons.heldout_labeller),
        ):
            b, k, t = data["tokens"].shape
            rows = min(self._rows(params, t, k), b)
            r = map_batches(
                partial(self._rankings_rewards, params), data, rows, mesh=ctx.mesh, rules=ctx.rules
            )
            m = reward_model_metrics(jnp.asarray(r), jnp.asarray(data["valid"]), jnp.asarray(data["ranks"]))
            out |= {f"rm/heldout_{key}_{name}": float(v) for key, v in m.items()}
        return out

    def fit(self, init_model: nnx.Module, data: dict[str, np.ndarray], name: str, round_no: int = 1) -> None:
        """Train a copy of `init_model` on packed rankings in the stage `name`; its held-out accuracy goes to
        the results (column `round`)."""
        ctx = self.ctx
        trainer = Trainer.from_model(init_model, reward_model_loss, self.cfg.train, ctx)
        state = trainer.fit(
            ctx.stage(name, self.cfg.train.steps, prefix="rm"),
            data,
            ctx.seed(f"{name}/batches"),
            eval_fn=lambda state, step: self.heldout_metrics(nnx.split(trainer.model(state))[1]),
            desc="reward model" if round_no == 1 else f"reward model, round {round_no}",
        )
        self.model = trainer.model(state)
        final = self.heldout_metrics(nnx.split(self.model)[1])
        for source in ("gold", "labeller"):
            pairs = int(final[f"rm/heldout_pairs_{source}"])
            correct = round(final[f"rm/heldout_accuracy_{source}"] * pairs)
            ctx.results.add(proportion_row(f"rm/accuracy_{source}", correct, pairs, round=round_no))
        ece = {"value": final["rm/heldout_ece_gold"], "ci_low": None, "ci_high": None}
        ctx.results.add(
            {"metric": "rm/ece_gold", **ece, "n": int(final["rm/heldout_pairs_gold"]), "round": round_no}
        )

    def score(self, params: RewardParams, prompts: list[list[int]], tokens, mask) -> np.ndarray:
        """Rewards (R,) float32 of sampled responses (R, N) to `prompts` (one per row), in batches of one
        shape (at most `_SCORE_ROWS`)."""
        p, pm = left_pad(prompts, self.prompt_len, self.ctx.tokenizer.pad_id)
        data = {
            "prompt": p,
            "prompt_mask": pm,
            "response": np.asarray(tokens),
            "response_mask": np.asarray(mask),
        }
        rows = min(self._rows(params.params, p.shape[1] + data["response"].shape[1]), _SCORE_ROWS)
        return map_batches(lambda b: self._response_rewards(params, **b), data, rows)

    def normalise(self, samples, round_no: int = 1):
        """Fold a bias (and gain) into the reward head so the policy's `samples` (prompts, tokens, mask, ...)
        score mean 0 (std 1), as InstructGPT normalises on demonstrations; returns the new parameters."""
        prompts, tokens, mask = samples[:3]
        raw = self.score(RewardParams.unnormalised(nnx.split(self.model)[1]), prompts, tokens, mask)
        norm = fit_normalization(jnp.asarray(raw), scale=self.cfg.normalize_std)
        fold_normalization(self.model, norm)
        suffix = "" if round_no == 1 else f"_round{round_no}"
        self.ctx.tracker.summary(
            {f"rm/norm_gain{suffix}": float(norm.gain), f"rm/norm_bias{suffix}": float(norm.bias)}
        )
        self.params = RewardParams(nnx.split(self.model)[1], norm.gain)
        return self.params
