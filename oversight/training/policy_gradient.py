"""The policy-gradient objective of small-action RL (debaters choosing pixels or quotes): one function.

`policy_gradient_loss` is the clipped surrogate of PPO (Schulman et al. 2017) on per-action log-probs, which
on-policy (the rollout's own policy, one gradient step per rollout) is REINFORCE with a baseline (Williams
1992). The caller computes the advantages (return minus its baseline: leave-one-out over repeated plays,
per-side means, whitening); this function only turns them into a loss. The token-level PPO-RLHF objective,
with its value loss, is `oversight.training.ppo.ppo_objective`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from oversight.settings import check_fields, setting


@dataclass
class PolicyGradientConfig:
    """A policy-gradient stage of small-action RL: rollouts, then epochs of minibatch updates of the clipped
    surrogate (with a KL penalty to the initial policy and an entropy bonus)."""

    # Rollout-then-update iterations.
    iterations: int = setting(20, ge=0)
    # Episodes rolled out per iteration (what an episode is belongs to the experiment: in text debate, a
    # question played in both answer orders, as debate and as consultancy).
    rollout_batch: int = setting(16, ge=1)
    # Learning rate (AdamW, cosine decay to a tenth over every update of the stage; no warm-up).
    learning_rate: float = setting(1e-3, gt=0)
    # Optimisation epochs over each rollout, each a fresh permutation split into `minibatches`.
    epochs: int = setting(2, ge=1)
    minibatches: int = setting(2, ge=1)
    # Gradient accumulation: each minibatch's gradient computed over this many equal microbatches in turn
    # (less memory, the same update; a minibatch's rows are rounded down to a multiple of it).
    microbatches: int = setting(1, ge=1)
    # Ratio clip ε of the surrogate.
    clip_eps: float = setting(0.2, gt=0)
    # Coefficient of KL(π || π_initial), the penalty that keeps the policy near where it started.
    kl_coef: float = setting(0.02, ge=0)
    # Entropy bonus coefficient.
    ent_coef: float = setting(0.0, ge=0)
    # Sampling temperature of the rollouts (log-probs are of logits / temperature).
    temperature: float = setting(1.0, gt=0)

    def __post_init__(self) -> None:
        check_fields(self, "rl.")


def policy_gradient_loss(
    logp: jax.Array,
    advantages: jax.Array,
    old_logp: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    clip_eps: float = 0.2,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L = -(1/B) Σ_b Σ_t m_bt min(ρ_bt A_bt, clip(ρ_bt, 1 - ε, 1 + ε) A_bt),  ρ = exp(logp - old_logp).

    logp: (B, T) log π(a_t | s_t) of the actions taken, under the policy being trained (differentiable);
    advantages: (B, T), or broadcastable to it, A_t (treated as constants);
    old_logp: (B, T) log-probs under the policy that acted; None: that is this policy, so ρ = 1 and the
      gradient is -(1/B) Σ m A ∇logp, REINFORCE with the caller's baseline (the loss value is then -mean A);
    mask: (B, T) 1 for the actions being trained, 0 for padding (None: every action).

    Actions sum within a row (an episode's log-probability is the sum of its moves') and rows average, so
    a row of several moves is one REINFORCE sample. Returns (loss, stats): the fraction of actions whose
    ratio lies outside the clip range and the k3 estimate of KL(π_old || π), E[(ρ - 1) - log ρ].
    """
    advantages = jax.lax.stop_gradient(advantages)
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    log_ratio = logp - old_logp  # (B, T)
    ratio = jnp.exp(log_ratio)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    m = jnp.ones_like(logp) if mask is None else mask.astype(logp.dtype)  # (B, T)
    if mask is not None:
        surrogate = surrogate * m
    loss = -jnp.mean(jnp.sum(surrogate, axis=-1))
    n = jnp.maximum(m.sum(), 1.0)
    stats = {
        "clip_fraction": jnp.sum((jnp.abs(ratio - 1) > clip_eps) * m) / n,
        "approx_kl": jnp.sum(((ratio - 1) - log_ratio) * m) / n,
    }
    return loss, stats
