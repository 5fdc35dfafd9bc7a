"""The PPO stage of RLHF: the policy (from SFT) with its value head, a frozen reference, a reward model, and
rounds of PPO iterations on a prompt set, checkpointed and resumable (the objective is
`oversight.training.ppo`).

Per iteration: `rollout_batch / samples_per_prompt` prompts drawn from the stream `ppo/prompts`,
`samples_per_prompt` sampled responses each (stream `ppo/rollouts`), scored (old log-probs, values, reference
log-probs, reward-model score with the missing-stop penalty), advantages (per-token KL reward, GAE or
leave-one-out, whitening), then `epochs` x `minibatches` clipped
updates; the adaptive KL controller steps after each batch. Every `eval_every` iterations a caller-supplied
evaluation measures the policy on held-out prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oversight.parallel import batch_sharding
from oversight.pipeline.context import RunContext, Stage
from oversight.pipeline.stages import decode_responses, train_state_from_model
from oversight.sampling import Sampler
from oversight.sampling.generate import left_pad
from oversight.tracking.progress import progress
from oversight.training.batched import batch_rows, map_batches
from oversight.training.checkpoint import Checkpointer, abstract_like
from oversight.training.loop import TrainConfig, make_optimizer
from oversight.training.ppo import (
    ActorCritic,
    AdaptiveKLController,
    PPOConfig,
    actor_and_critic,
    actor_critic_optimizer,
    init_value_head,
    make_ppo_update,
    make_rollout_phases,
    rollout_batch,
)
from oversight.training.reward_model import RewardNormalization

# (state, PPO iterations done over all rounds) -> {"metrics": logged at the step, "rows": results rows to keep
# in the history, ...anything else the caller wants back}
Evaluate = Callable[[Any, int], dict[str, Any]]


class PPOTrainer:
    """PPO from an SFT policy against reward-model parameters that may change between rounds."""

    def __init__(
        self,
        ctx: RunContext,
        cfg: PPOConfig,
        sft_model: nnx.Module,
        reward_model: nnx.Module,
        *,
        prompt_len: int,
        sampler: Callable[[nnx.Module, int], Sampler],
        rounds: int = 1,
        rm_generative: bool = False,
        gold_normalisation: RewardNormalization | None = None,
    ):
        self.ctx, self.cfg, self.prompt_len = ctx, cfg, prompt_len
        if cfg.reward == "gold" and gold_normalisation is None:
            raise ValueError("ppo.reward=gold needs the gold reward's normalisation (gold_normalisation)")
        self.gold_normalisation = gold_normalisation
        self.graphdef, self.ref_params = nnx.split(sft_model)  # the frozen reference
        self.model_cfg = sft_model.config
        policy = nnx.merge(self.graphdef, self.ref_params)
        # The value head: on the policy's trunk, or on a critic of its own that starts as the reward model.
        critic = policy if cfg.critic == "shared" else nnx.merge(*nnx.split(reward_model))
        init_value_head(critic, cfg.value_head, reward_model if cfg.value_init == "reward_model" else None)
        trained = policy if cfg.critic == "shared" else ActorCritic(policy, critic)
        train = ctx.cfg.train  # clipping and Adam betas as in the run's other stages
        updates = TrainConfig(
            steps=rounds * cfg.iterations * cfg.epochs * cfg.minibatches,
            learning_rate=cfg.learning_rate,
            warmup_steps=0,
            grad_clip=train.grad_clip,
            weight_decay=0.0,
            b1=train.b1,
            b2=train.b2,
        )
        tx = make_optimizer(updates)
        if cfg.critic == "separate":
            critic_lr = cfg.critic_learning_rate or cfg.learning_rate
            tx = actor_critic_optimizer(
                tx, make_optimizer(dataclasses.replace(updates, learning_rate=critic_lr))
            )
        self.state_graphdef, self.state, shardings = train_state_from_model(trained, tx, ctx.mesh, ctx.rules)
        stop = (ctx.tokenizer.eos_id,)
        self.score_rollout, self.advantages = make_rollout_phases(
            self.state_graphdef, self.graphdef, cfg, stop, rm_generative
        )
        self.update = make_ppo_update(
            self.state_graphdef, cfg, cfg.rollout_batch, shardings, ctx.mesh, ctx.rules
        )
        self.sampler = sampler(policy, cfg.rollout_batch)
        self.kl_ctl = AdaptiveKLController.from_config(cfg)
        self.history: list[dict] = []  # results rows of every evaluation so far (kept in checkpoints)

    def policy(self, state=None) -> nnx.Module:
        return actor_and_critic(nnx.merge(self.state_graphdef, self.state if state is None else state)[0])[0]

    def score(self, rm_params, prompts: list[list[int]], tokens, mask, state=None) -> dict[str, np.ndarray]:
        """The scoring phase on sampled responses (one row per prompt) against `rm_params`: the policy's and the
        reference's log-probs, values, the reward model's score (`proxy`) and the summed KL from the reference."""
        p, pm = left_pad(prompts, self.prompt_len, self.ctx.tokenizer.pad_id)
        return self._score_padded(rm_params, p, pm, tokens, mask, self.state if state is None else state)

    def _score_padded(
        self, rm_params, prompt, prompt_mask, response, response_mask, state
    ) -> dict[str, np.ndarray]:
        """`score` of left-padded prompts (R, P), in batches of one shape (each row scored on its own)."""
        data = {
            "prompt": np.asarray(prompt),
            "prompt_mask": np.asarray(prompt_mask),
            "response": np.asarray(response),
            "response_mask": np.asarray(response_mask),
        }
        n, length = data["prompt"].shape[0], data["prompt"].shape[1] + data["response"].shape[1]
        rows = min(batch_rows(self.model_cfg, length), n)
        return map_batches(lambda b: self.score_rollout(state, self.ref_params, rm_params, **b), data, rows)

    def run_round(
        self,
        stage: Stage,
        rm_params,
        problems: list,
        evaluate: Evaluate,
        gold: Callable[[list, list[str]], np.ndarray],
        round_no: int = 1,
    ) -> dict | None:
        """One round's `iterations` PPO iterations on `problems` against `rm_params`, in `stage`; a killed round
        resumes where it was (with the KL coefficient and the evaluation history). `gold(problems, texts)` gives
        the gold reward of rollouts (logged). Returns the last evaluation, or None if nothing was left to run."""
        ctx, cfg, tokenizer = self.ctx, self.cfg, self.ctx.tokenizer
        prompts = [tokenizer.prompt_ids(p.prompt) for p in problems]
        first = (round_no - 1) * cfg.iterations  # iterations of the earlier rounds
        checkpointer = Checkpointer(stage.checkpoint_dir, keep=ctx.cfg.train.keep_checkpoints)
        start, latest = 0, checkpointer.latest_step()
        if latest:
            self.state, meta = checkpointer.restore(latest, abstract_like(self.state))
            start, self.kl_ctl.value, self.history = meta["iteration"], meta["kl_coef"], meta["history"]
        if start == 0 and round_no == 1:
            ev = evaluate(self.state, 0)
            ctx.tracker.log(ev["metrics"], step=stage.offset)
            self.history = list(ev["rows"])
        ev = None
        bar = progress(cfg.iterations, start, desc=stage.name, unit="iteration")
        for it in range(start, cfg.iterations):
            step = first + it  # over all rounds: keys and prompt draws never repeat
            key = jax.random.fold_in(ctx.key("ppo/rollouts"), step)
            k = cfg.samples_per_prompt  # each drawn prompt k times in a row: the groups of leave-one-out
            idx = np.random.default_rng([ctx.seed("ppo/prompts"), step]).choice(
                len(problems), cfg.rollout_batch // k, replace=False
            )
            idx = np.repeat(idx, k)
            batch = [prompts[i] for i in idx]
            self.sampler.update(self.policy())
            out = self.sampler.sample(batch, jax.random.fold_in(key, 0))
            p, pm = (jnp.asarray(x) for x in left_pad(batch, self.prompt_len, tokenizer.pad_id))
            scored = self._score_padded(rm_params, p, pm, out.tokens, out.mask, self.state)
            texts = decode_responses(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
            golds = np.asarray(gold([problems[i] for i in idx], texts), np.float32)  # (B,)
            if cfg.reward == "gold":  # the ceiling arm: the checker's reward in place of the model's score
                scored = dict(scored, score=self.gold_normalisation.apply(jnp.asarray(golds)))
            adv = self.advantages(scored, out.mask, jnp.float32(self.kl_ctl.value))
            rollout = rollout_batch(p, pm, out.tokens, out.mask, scored, adv)
            rollout = jax.device_put(rollout, batch_sharding(ctx.mesh, ctx.rules))  # rows over the batch axes
            self.state, stats = self.update(self.state, rollout, jax.random.fold_in(key, 1))
            stats = {k: float(v) for k, v in jax.device_get(stats).items()}
            if not all(np.isfinite(v) for v in stats.values()):
                raise FloatingPointError(
                    f"{stage.name}: non-finite loss at iteration {it + 1}; last good checkpoint: "
                    f"{checkpointer.latest_step()}"
                )
            rollout_gold = float(np.mean(golds))
            roll = {k: float(v) for k, v in jax.device_get(adv["stats"]).items()}
            done = it + 1
            metrics = {
                "ppo/kl": roll["objective/kl"],
                "ppo/score": roll["objective/scores"],
                "ppo/proxy_reward": float(np.mean(scored["proxy"])),
                "ppo/non_score_reward": roll["objective/non_score_reward"],
                "ppo/response_length": roll["objective/response_length"],
                "ppo/kl_coef": self.kl_ctl.value,
                "ppo/gold_reward": rollout_gold,
                **{f"ppo/{k.replace('/', '_')}": v for k, v in stats.items()},
            }
            self.kl_ctl.update(roll["objective/kl"], cfg.rollout_batch)
            ctx.tracker.log(metrics, step=stage.offset + done)
            if done % cfg.eval_every == 0 or done == cfg.iterations:
                ev = evaluate(self.state, first + done)
                ctx.tracker.log(ev["metrics"], step=stage.offset + done)
                self.history += ev["rows"]
            if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
                meta = {"iteration": done, "kl_coef": self.kl_ctl.value, "history": self.history}
                checkpointer.save(stage.offset + done, self.state, meta)
            bar.update(1)
            bar.set_postfix(kl=f"{metrics['ppo/kl']:.2f}", gold=f"{rollout_gold:.3f}", refresh=False)
        bar.close()
        checkpointer.close()
        stage.finish()
        return ev
