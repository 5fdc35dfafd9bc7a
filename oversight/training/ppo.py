"""PPO for RLHF (the InstructGPT recipe), as a library of pure, jit-friendly functions.

One rollout batch goes through, in order:
  1. `response_logprobs` of the policy (old log-probs, values) and the frozen reference on the sampled tokens,
     from logits divided by the sampling temperature, in float32;
  2. the reward model's score at the last real token (`reward_model.reward_scores`), normalised, minus
     `missing_stop_penalty` for responses cut off without a stop token;
  3. `per_token_rewards`: r_t = -β (log π - log π_ref), plus the score at the last real response token;
  4. `gae` (no bootstrapping past the last real token), returns = advantages + values, then `masked_whiten`
     of the advantages with global statistics (`rollout_advantages` does 3–4);
  5. several epochs of minibatches (`minibatch_indices`, a fresh permutation each epoch) through `ppo_loss`,
     the clipped policy loss, clipped value loss, entropy bonus and optional PPO-ptx term;
  6. `AdaptiveKLController.update` with the batch's mean summed KL.

The value function is a head on the policy's trunk (Ziegler et al.; a `Transformer`) or a separate critic
transformer (InstructGPT, initialised from the reward model; an `ActorCritic` pairing the two). Every function
that takes the trained model accepts either.

Layout: prompts are left-padded (B, P) and responses right-padded (B, N), as the sampler returns them; the
model sees the concatenation (B, P + N). Logits and values at position P - 1 + t belong to response token t.
All reward, advantage and value tensors are float32 whatever the dtype of the inputs (a score of 0.123456 must
never meet an integer buffer).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from oversight.models.kernels import target_logprobs
from oversight.models.transformer import Transformer, positions_from_mask
from oversight.parallel import batch_sharding
from oversight.settings import check_fields, setting
from oversight.training.loop import training_compiler_options
from oversight.training.reward_model import RewardParams, reward_scores
from oversight.training.sft import sft_loss

VALUE_INITS = ("reward_model", "zero")
CRITICS = ("shared", "separate")
ADVANTAGES = ("gae", "leave_one_out")
REWARDS = ("reward_model", "gold")


@dataclass(frozen=True)
class PPOConfig:
    # Discount γ; 1 in RLHF (one episode = one response, rewards already carry the KL per token).
    gamma: float = setting(1.0, gt=0, le=1)
    # GAE λ.
    lam: float = setting(0.95, gt=0, le=1)
    # Policy ratio clip ε: the surrogate is clipped to [1 - ε, 1 + ε].
    clip_eps: float = setting(0.2, gt=0)
    # Value clip: new values stay within ±clip_value of the rollout's; 0 = no value clipping.
    clip_value: float = setting(0.2, ge=0)
    # Weight of the value loss (0.1 in Ziegler et al., where policy and value share a trunk).
    vf_coef: float = setting(0.1, ge=0)
    # Entropy bonus coefficient (0 in InstructGPT and Ziegler et al.).
    ent_coef: float = setting(0.0, ge=0)
    # Initial KL coefficient β of the per-token penalty (0.02 in InstructGPT).
    kl_coef: float = setting(0.02, ge=0)
    # Adaptive KL controller target (summed KL per response, nats); None = fixed β.
    kl_target: float | None = setting(None, gt=0)
    # Adaptive KL controller horizon, in episodes (responses); Ziegler et al. use 10000.
    kl_horizon: int = setting(10000, gt=0)
    # Optimisation epochs over each rollout batch.
    epochs: int = setting(4, ge=1)
    # Minibatches per epoch (each epoch draws a fresh permutation).
    minibatches: int = setting(1, ge=1)
    # PPO-ptx coefficient γ_ptx on the pretraining log-likelihood (27.8 in InstructGPT; 0 = plain PPO).
    ptx_coef: float = setting(0.0, ge=0)
    # Subtracted from the score of a response without a stop token (it was truncated at the length limit).
    missing_stop_penalty: float = setting(1.0, ge=0)
    # Sampling temperature of the rollouts; log-probs for the ratio and the KL use logits / temperature.
    temperature: float = setting(1.0, gt=0)
    # Whiten advantages (global masked mean 0, std 1) before the update.
    whiten_advantages: bool = True
    # The advantage of each token: "gae" (the critic's values, InstructGPT) or "leave_one_out" (every token
    # of a response gets its return, score - β·KL, minus the mean return of the other responses to the same
    # prompt: RLOO, Kool et al. 2019, Ahmadian et al. 2024; the critic is still trained but not used).
    advantage: str = setting("gae", choices=ADVANTAGES)
    # Responses sampled per rollout prompt (rollout_batch / samples_per_prompt distinct prompts per batch);
    # "leave_one_out" needs at least 2.
    samples_per_prompt: int = setting(1, ge=1)
    # Name of the policy's value head (a scalar head of the same trunk).
    value_head: str = "value"
    # --- the PPO stage (`oversight.pipeline.ppo`)
    # What PPO maximises: the reward model's score (RLHF), or the task's gold reward normalised on the same
    # samples as the reward model (the ceiling: how far this optimiser gets when the reward is right).
    reward: str = setting("reward_model", choices=REWARDS)
    # Rollout batches (iterations) per round.
    iterations: int = setting(30, ge=1)
    # Responses per rollout batch (`samples_per_prompt` to each prompt drawn).
    rollout_batch: int = setting(64, ge=1)
    # Peak learning rate of the policy (cosine decay to a tenth over every update of the run; no warm-up).
    learning_rate: float = setting(3e-5, gt=0)
    # Where the value head lives: "shared" (on the policy's trunk, Ziegler et al.) or "separate" (a critic
    # transformer started from the reward model, as InstructGPT's value function).
    critic: str = setting("shared", choices=CRITICS)
    # Learning rate of a separate critic (None: the policy's). Its value head may start at zero, and at the
    # policy's rate it would not even learn the returns' mean within a short run.
    critic_learning_rate: float | None = setting(None, gt=0)
    # Value head initialisation: "reward_model" (InstructGPT) or "zero".
    value_init: str = setting("reward_model", choices=VALUE_INITS)
    # Evaluate on held-out prompts every N iterations (and before the first and after the last).
    eval_every: int = setting(5, ge=1)
    # Save a checkpoint every N iterations (and after the last).
    checkpoint_every: int = setting(10, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "ppo.")  # temperature > 0: greedy rollouts have no log-probs to take a ratio of
        if self.critic_learning_rate is not None and self.critic != "separate":
            raise ValueError("ppo.critic_learning_rate needs ppo.critic=separate")
        if self.rollout_batch % self.samples_per_prompt:
            raise ValueError(
                f"ppo.rollout_batch={self.rollout_batch} must be a multiple of "
                f"ppo.samples_per_prompt={self.samples_per_prompt}"
            )
        if self.advantage == "leave_one_out" and self.samples_per_prompt < 2:
            raise ValueError("ppo.advantage=leave_one_out needs ppo.samples_per_prompt >= 2")


# --- rollout side: log-probs, rewards, advantages -------------------------------------------------------


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(jnp.float32)
    return (x * m).sum() / jnp.maximum(m.sum(), 1.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / std over the real (mask = 1) entries; masked entries become 0. float32, x's shape.

    The variance is the population one (ddof 0), so the result has mean 0 and std 1 over the real entries.
    Statistics are global: under jit with x sharded over a mesh, these plain sums over the whole (global)
    array are reduced across shards by XLA. Only inside shard_map/pmap would they be per-shard (and need
    a psum), which is the per-device whitening the original OpenAI code did.
    """
    x = x.astype(jnp.float32)
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (x * m).sum() / n
    var = (jnp.square(x - mean) * m).sum() / n
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


class ActorCritic(nnx.Module):
    """A policy and a separate critic, trained together by one optimizer (the critic only by the value loss).

    A critic of its own keeps the value loss, large while the values are still wrong, from moving the policy's
    weights, and lets it start from the reward model's trunk, which already reads the responses it must value.
    """

    def __init__(self, policy: Transformer, critic: Transformer):
        self.policy = policy
        self.critic = critic


def actor_and_critic(model: Transformer | ActorCritic) -> tuple[Transformer, Transformer]:
    """(policy, the model holding the value head): the same transformer twice unless `model` is an ActorCritic."""
    if isinstance(model, ActorCritic):
        return model.policy, model.critic
    return model, model


def actor_critic_optimizer(
    policy_tx: optax.GradientTransformation, critic_tx: optax.GradientTransformation
) -> optax.GradientTransformation:
    """One optimizer for an ActorCritic's parameters: `policy_tx` on the policy's, `critic_tx` on the critic's,
    so a value function can learn at its own rate (with Adam a loss weight cannot set it)."""

    def labels(params):  # "policy" or "critic": the first key of each parameter's path
        return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), params)

    return optax.multi_transform({"policy": policy_tx, "critic": critic_tx}, labels)


def _response_hidden(model: Transformer, prompt, prompt_mask, response, response_mask) -> jax.Array:
    """The trunk's hidden states at the positions that predict the response tokens (B, N, D). PPO's
    minibatches are small: the trunk materialises its residual gradients (see `oversight.models.kernels.materialize_grad`)."""
    p, n = prompt.shape[1], response.shape[1]
    tokens = jnp.concatenate([prompt, response], axis=1)  # (B, P+N)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), response_mask.astype(jnp.int32)], axis=1)
    hidden, _ = model(tokens, positions_from_mask(mask), mask, materialize_block_grads=True)  # (B, P+N, D)
    return hidden[:, p - 1 : p - 1 + n]


def response_outputs(
    model: Transformer | ActorCritic,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    response: jax.Array,
    response_mask: jax.Array,
    temperature: float = 1.0,
    value_head: str | None = None,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """One forward pass over prompt + response: per-response-token (log-prob, entropy, value), each (B, N).

    prompt (B, P) left-padded, response (B, N) right-padded. Log-probs and entropy are of the distribution
    softmax(logits / temperature) in float32, the one the sampler drew from; masked positions are 0.
    The value for token t is read where token t is predicted (position P - 1 + t), i.e. before it is chosen,
    from the critic's own forward pass when `model` is an ActorCritic.
    """
    policy, critic = actor_and_critic(model)
    h = _response_hidden(policy, prompt, prompt_mask, response, response_mask)  # (B, N, D)
    logits = policy.logits(h) / jnp.float32(temperature)  # (B, N, V) float32
    m = response_mask.astype(jnp.float32)
    logp = target_logprobs(logits, response) * m  # (B, N)
    entropy = None
    if with_entropy:
        logz = jax.nn.logsumexp(logits, axis=-1)  # (B, N)
        entropy = (logz - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)) * m  # (B, N)
    values = None
    if value_head is not None:
        if critic is not policy:
            h = _response_hidden(critic, prompt, prompt_mask, response, response_mask)
        values = critic.scalar(h, value_head) * m  # (B, N) float32
    return logp, entropy, values


def response_logprobs(
    model: Transformer,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    response: jax.Array,
    response_mask: jax.Array,
    temperature: float = 1.0,
) -> jax.Array:
    """log π(response_t | prompt, response_<t) at `temperature`, float32 (B, N); 0 after the response.

    Use it for the reference policy, and also for the rollout policy's old log-probs: a full forward pass
    gives the same numbers as the training forward pass, which the sampler's cached decode need not exactly.
    """
    return response_outputs(model, prompt, prompt_mask, response, response_mask, temperature)[0]


def truncate_after_stop(
    response: jax.Array, stop_tokens: tuple[int, ...], pad_id: int
) -> tuple[jax.Array, jax.Array]:
    """Response mask up to and including the first stop token; tokens after it replaced by `pad_id`. (B, N)"""
    is_stop = jnp.isin(response, jnp.asarray(stop_tokens, response.dtype)).astype(jnp.int32)
    stops_before = jnp.cumsum(is_stop, axis=1) - is_stop  # stop tokens strictly before t
    mask = (stops_before == 0).astype(jnp.int32)
    return jnp.where(mask == 1, response, pad_id), mask


def has_stop(response: jax.Array, response_mask: jax.Array, stop_tokens: tuple[int, ...]) -> jax.Array:
    """(B,) bool: the response contains a stop token among its real tokens."""
    is_stop = jnp.isin(response, jnp.asarray(stop_tokens, response.dtype)) & response_mask.astype(bool)
    return is_stop.any(axis=1)


def missing_stop_penalty(
    score: jax.Array,
    response: jax.Array,
    response_mask: jax.Array,
    stop_tokens: tuple[int, ...],
    penalty: float | jax.Array,
) -> jax.Array:
    """score - penalty for responses without a stop token (truncated at the length limit), float32 (B,)."""
    score = jnp.asarray(score, jnp.float32)
    return score - jnp.where(has_stop(response, response_mask, stop_tokens), 0.0, jnp.float32(penalty))


def per_token_kl(logp: jax.Array, ref_logp: jax.Array, response_mask: jax.Array) -> jax.Array:
    """k1 estimate log π - log π_ref of the sampled tokens, float32 (B, N); 0 after the response.

    Its sum over a response is an unbiased estimate of KL(π || π_ref) for that prompt."""
    return (logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)) * response_mask.astype(jnp.float32)


def per_token_rewards(
    logp: jax.Array,
    ref_logp: jax.Array,
    score: jax.Array,
    response_mask: jax.Array,
    beta: float | jax.Array,
) -> jax.Array:
    """r_t = -β (log π - log π_ref) on real response tokens, with the score added at the last one. (B, N)

    logp, ref_logp (B, N) at the sampling temperature; score (B,) the (normalised, penalised) reward-model
    score; response_mask (B, N) 1 up to and including the stop token. Everything is float32; nothing is
    placed after the stop token. A row with no real token gets no reward at all.
    """
    m = response_mask.astype(jnp.float32)
    kl = per_token_kl(logp, ref_logp, response_mask)  # (B, N)
    last = jnp.argmax(jnp.cumsum(m, axis=1), axis=1)  # (B,) first position where the count is maximal
    at_last = jax.nn.one_hot(last, m.shape[1], dtype=jnp.float32) * m  # (B, N), zero for an empty row
    return -jnp.asarray(beta, jnp.float32) * kl + at_last * jnp.asarray(score, jnp.float32)[:, None]


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over the real tokens of each row. Returns (advantages, returns), (B, N).

    δ_t = r_t + γ V_{t'} - V_t and A_t = δ_t + γ λ A_{t'}, where t' is the next real token of the row;
    after the last real token there is nothing to bootstrap from (V = A = 0). Masked positions are skipped
    (they carry the next real token's V and A through) and come out 0, so right-padded, left-padded or
    gappy rows all work. returns = advantages + values, before any whitening.
    """
    rewards = rewards.astype(jnp.float32)
    values = values.astype(jnp.float32)
    m = mask.astype(jnp.float32)

    def step(carry, xs):
        next_value, next_adv = carry  # (B,), (B,)
        r, v, real = xs
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(real > 0, v, next_value), jnp.where(real > 0, adv, next_adv))
        return carry, adv * real

    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    # scan over time, last token first: inputs (N, B)
    _, adv = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, m.T), reverse=True)
    advantages = adv.T  # (B, N)
    return advantages, (advantages + values) * m


def leave_one_out_advantages(returns: jax.Array, group: int) -> jax.Array:
    """A_i = R_i - mean of R_j over the other responses j to the same prompt. returns (B,) float32, rows in
    groups of `group` consecutive responses to one prompt; (B,)."""
    r = returns.astype(jnp.float32).reshape(-1, group)  # (B / group, group)
    others = (r.sum(axis=1, keepdims=True) - r) / (group - 1)
    return (r - others).reshape(-1)


def rollout_advantages(
    logp: jax.Array,
    ref_logp: jax.Array,
    values: jax.Array,
    score: jax.Array,
    response_mask: jax.Array,
    beta: float | jax.Array,
    cfg: PPOConfig,
) -> dict[str, jax.Array]:
    """Rewards, advantages (whitened if `cfg.whiten_advantages`) and returns of a rollout batch, plus stats.

    logp/ref_logp/values (B, N) from `response_outputs`; score (B,) already normalised and penalised. With
    `cfg.advantage` "leave_one_out", rows come in groups of `cfg.samples_per_prompt` responses to one prompt.
    """
    m = response_mask.astype(jnp.float32)
    rewards = per_token_rewards(logp, ref_logp, score, response_mask, beta)  # (B, N)
    advantages, returns = gae(rewards, values * m, response_mask, cfg.gamma, cfg.lam)
    if cfg.advantage == "leave_one_out":  # the response's whole return (γ = 1) against its siblings'
        loo = leave_one_out_advantages(rewards.sum(axis=1), cfg.samples_per_prompt)  # (B,)
        advantages = loo[:, None] * m
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, response_mask)
    kl = per_token_kl(logp, ref_logp, response_mask).sum(axis=1)  # (B,) summed per response
    return {
        "rewards": rewards,
        "advantages": advantages,
        "returns": returns,
        "stats": {
            "objective/kl": kl.mean(),
            "objective/scores": jnp.asarray(score, jnp.float32).mean(),
            "objective/non_score_reward": (-jnp.asarray(beta, jnp.float32) * kl).mean(),
            "objective/response_length": m.sum(axis=1).mean(),
        },
    }


class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β (1 + clip(KL / target - 1, ±0.2) · n / horizon) after each rollout batch.

    `target` None keeps β fixed. `current_kl` is the batch mean of the summed per-response KL
    (`rollout_advantages(...)["stats"]["objective/kl"]`); `n_steps` the number of responses in the batch.
    """

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value = float(init_kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
            self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    @classmethod
    def from_config(cls, cfg: PPOConfig) -> AdaptiveKLController:
        return cls(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)


def minibatch_indices(batch_size: int, minibatches: int, key: jax.Array) -> jax.Array:
    """A fresh permutation of the rollout batch split into `minibatches` rows of indices. (M, B / M)"""
    if batch_size % minibatches:
        raise ValueError(f"ppo: rollout batch {batch_size} is not divisible into {minibatches} minibatches")
    return jax.random.permutation(key, batch_size).reshape(minibatches, batch_size // minibatches)


# --- update side: the PPO loss -----------------------------------------------------------------------------


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var[returns - values] / Var[returns] over real tokens (1 = perfect value function, ≤ 0 = useless)."""
    var_returns = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
    residual = returns - values
    var_residual = masked_mean(jnp.square(residual - masked_mean(residual, mask)), mask)
    return 1.0 - var_residual / jnp.maximum(var_returns, 1e-8)


def ppo_loss(
    model: Transformer | ActorCritic, minibatch: dict[str, jax.Array], cfg: PPOConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The PPO-RLHF loss of one minibatch; `loss_fn(model, batch)` for the shared train step (bind `cfg`).

    minibatch: prompt, prompt_mask (B, P); response, response_mask (B, N); from the rollout, float32 (B, N):
    old_logprobs (at the sampling temperature), old_values, advantages (whitened), returns. Optional PPO-ptx
    batch: ptx_tokens, ptx_mask, ptx_loss_mask (B', T') as `sft.pack_examples` makes them.
    """
    logprobs, entropy, values = response_outputs(
        model,
        minibatch["prompt"],
        minibatch["prompt_mask"],
        minibatch["response"],
        minibatch["response_mask"],
        cfg.temperature,
        cfg.value_head,
        with_entropy=True,
    )
    if cfg.ent_coef == 0.0:  # then the entropy is only a statistic: no backward pass through it (-9% bytes)
        entropy = jax.lax.stop_gradient(entropy)
    loss, stats = ppo_objective(logprobs, entropy, values, minibatch, cfg)
    if "ptx_tokens" in minibatch:
        # PPO-ptx: + γ_ptx E_pretrain[log π(x)] in the objective, i.e. γ_ptx × the SFT loss, at temperature 1
        # (it is the data's likelihood, not the sampling distribution's).
        ptx_batch = {
            "tokens": minibatch["ptx_tokens"],
            "mask": minibatch["ptx_mask"],
            "loss_mask": minibatch["ptx_loss_mask"],
        }
        ptx_loss, _ = sft_loss(actor_and_critic(model)[0], ptx_batch)
        loss = loss + cfg.ptx_coef * ptx_loss
        stats["ptx/loss"] = ptx_loss
    return loss, stats


def ppo_objective(
    logprobs: jax.Array,
    entropy: jax.Array,
    values: jax.Array,
    minibatch: dict[str, jax.Array],
    cfg: PPOConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped policy loss + vf_coef × clipped value loss - ent_coef × entropy, from the current policy's
    logprobs, entropy and values (B, N); token means over the real response tokens of the minibatch."""
    mask = minibatch["response_mask"]
    advantages = minibatch["advantages"].astype(jnp.float32)
    returns = minibatch["returns"].astype(jnp.float32)
    old_values = minibatch["old_values"].astype(jnp.float32)

    # Clipped surrogate objective, L^CLIP = E[min(ρ A, clip(ρ, 1 - ε, 1 + ε) A)], as a loss to minimise.
    logratio = logprobs - minibatch["old_logprobs"].astype(jnp.float32)
    ratio = jnp.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
    pg_loss = masked_mean(jnp.maximum(pg_losses, pg_losses_clipped), mask)

    # Clipped value loss: the new value may move at most clip_value from the rollout's value.
    vf_losses = jnp.square(values - returns)
    if cfg.clip_value > 0:
        values_clipped = old_values + jnp.clip(values - old_values, -cfg.clip_value, cfg.clip_value)
        vf_losses_clipped = jnp.square(values_clipped - returns)
        vf_loss = 0.5 * masked_mean(jnp.maximum(vf_losses, vf_losses_clipped), mask)
        # Tokens where clipping changed the loss. Requiring the clip to be active keeps unclipped tokens (whose
        # two losses are equal up to rounding) out of the count, so the metric does not depend on rounding.
        clipped = (jnp.abs(values - old_values) > cfg.clip_value) & (vf_losses_clipped > vf_losses)
        vf_clipfrac = masked_mean(clipped.astype(jnp.float32), mask)
    else:
        vf_loss = 0.5 * masked_mean(vf_losses, mask)
        vf_clipfrac = jnp.float32(0.0)

    entropy_mean = masked_mean(entropy, mask)
    loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy_mean
    stats = {
        "policy/loss": pg_loss,
        "policy/entropy": entropy_mean,
        # k3 estimator of KL(π_old || π): E_old[(ρ - 1) - log ρ] >= 0, unbiased and low-variance (Schulman).
        "policy/approx_kl": masked_mean((ratio - 1.0) - logratio, mask),
        "policy/clipfrac": masked_mean((jnp.abs(ratio - 1.0) > cfg.clip_eps).astype(jnp.float32), mask),
        "policy/ratio": masked_mean(ratio, mask),
        "value/loss": vf_loss,
        "value/clipfrac": vf_clipfrac,
        "value/explained_variance": explained_variance(values, returns, mask),
        "value/mean": masked_mean(values, mask),
    }
    return loss, stats


def init_value_head(
    model: Transformer, head: str = "value", source: nnx.Module | None = None, source_head: str = "reward"
) -> None:
    """Initialise the value head in place: from `source`'s `source_head` (InstructGPT initialises the value
    function from the reward model) or, with no source, to zero (Ziegler et al.) so early values are 0."""
    dst = model.heads[head]
    if source is None:
        dst["w"][...] = jnp.zeros_like(dst["w"][...])
        dst["b"][...] = jnp.zeros_like(dst["b"][...])
    else:
        src = source.heads[source_head]
        dst["w"][...] = src["w"][...]
        dst["b"][...] = src["b"][...]


def make_ppo_update(graphdef, ppo_cfg: PPOConfig, rollout_batch: int, state_shardings, mesh, rules):
    """Phase 3 of a PPO iteration, jitted with explicit shardings: (state, rollout, key) -> (state, mean stats).

    `epochs` fresh permutations of the rollout batch, each split into `minibatches` minibatches, one optimizer
    step per minibatch. The state (the trained model, a Transformer or an ActorCritic, and its optimizer) keeps
    its logical shardings; every rollout array is split on its leading (batch) dimension over the mesh's batch
    axes; the key is replicated.
    """

    def update(state, rollout, key):
        def minibatch_step(state, idx):
            batch = jax.tree.map(lambda x: x[idx], rollout)
            model, optimizer = nnx.merge(graphdef, state)
            loss_fn = lambda m: ppo_loss(m, batch, ppo_cfg)  # noqa: E731
            grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optimizer.wrt), has_aux=True)
            (loss, stats), grads = grad_fn(model)
            optimizer.update(model, grads)
            stats = {**stats, "loss": loss, "grad_norm": optax.tree.norm(grads)}
            return nnx.state((model, optimizer)), stats

        def epoch(state, key):
            idx = minibatch_indices(rollout_batch, ppo_cfg.minibatches, key)
            return jax.lax.scan(minibatch_step, state, idx)

        state, stats = jax.lax.scan(epoch, state, jax.random.split(key, ppo_cfg.epochs))
        return state, jax.tree.map(jnp.mean, stats)

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        update,
        in_shardings=(state_shardings, batch_sharding(mesh, rules), replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
        compiler_options=training_compiler_options(mesh),
    )


def rollout_batch(prompt, prompt_mask, response, response_mask, scored: dict, adv: dict) -> dict:
    """The update phase's input: the sampled tokens with the scoring phase's old log-probs and values and the
    advantage phase's whitened advantages and returns, all (B, ...) rows of one rollout."""
    return {
        "prompt": prompt,
        "prompt_mask": prompt_mask,
        "response": response,
        "response_mask": response_mask,
        "old_logprobs": scored["logp"],
        "old_values": scored["values"],
        "advantages": adv["advantages"],
        "returns": adv["returns"],
    }


def make_rollout_phases(
    policy_graphdef, graphdef, ppo_cfg: PPOConfig, stop_tokens: tuple[int, ...], rm_generative: bool = False
):
    """Phases 1 and 2 of a PPO iteration, each one jitted function of fixed shapes.

    `score_rollout(policy_state, ref_params, rm, prompt, prompt_mask, response, response_mask)`: the
    policy's old log-probs and values, the reference's log-probs, the reward model's score (head "reward")
    with the missing-stop penalty, and the summed per-token KL. `policy_graphdef` merges with the policy's
    (model, optimizer) state; `graphdef` with the bare reference parameters and the reward model's
    (`rm`, a `RewardParams`). With `rm_generative` the reward model's score adds its log-likelihood of the
    response, scaled by `rm.lm_scale` (`reward_scores`).
    `advantages(scored, response_mask, beta)`: per-token rewards, GAE, returns and whitening; β is traced, so
    the adaptive KL controller never recompiles.
    """

    @jax.jit
    def score_rollout(
        policy_state, ref_params, rm: RewardParams, prompt, prompt_mask, response, response_mask
    ):
        model, _ = nnx.merge(policy_graphdef, policy_state)
        ref = nnx.merge(graphdef, ref_params)
        rm_model = nnx.merge(graphdef, rm.params)
        logp, _, values = response_outputs(
            model, prompt, prompt_mask, response, response_mask, ppo_cfg.temperature, ppo_cfg.value_head
        )
        ref_logp = response_logprobs(ref, prompt, prompt_mask, response, response_mask, ppo_cfg.temperature)
        tokens = jnp.concatenate([prompt, response], axis=1)  # (B, P+N)
        mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
        scored = (
            jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], axis=1) if rm_generative else None
        )
        proxy = reward_scores(rm_model, tokens, mask, "reward", scored, rm.lm_scale)  # (B,)
        score = missing_stop_penalty(
            proxy, response, response_mask, stop_tokens, ppo_cfg.missing_stop_penalty
        )
        kl = per_token_kl(logp, ref_logp, response_mask).sum(axis=1)
        return {
            "logp": logp,
            "ref_logp": ref_logp,
            "values": values,
            "proxy": proxy,
            "score": score,
            "kl": kl,
        }

    @jax.jit
    def advantages(scored, response_mask, beta):
        return rollout_advantages(
            scored["logp"],
            scored["ref_logp"],
            scored["values"],
            scored["score"],
            response_mask,
            beta,
            ppo_cfg,
        )

    return score_rollout, advantages
