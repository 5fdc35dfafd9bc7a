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


@dataclass
class PolicyGradientConfig:
    """A policy-gradient stage of small-action RL: rollouts, then epochs of minibatch updates of the clipped
    surrogate (with a KL penalty to the initial policy and an entropy bonus)."""

    # Rollout-then-update iterations.
    iterations: int = 20
    # Episodes rolled out per iteration (what an episode is belongs to the experiment: in text debate, a
    # question played in both answer orders, as debate and as consultancy).
    rollout_batch: int = 16
    # Learning rate (AdamW, cosine decay to a tenth over every update of the stage; no warm-up).
    learning_rate: float = 1e-3
    # Optimisation epochs over each rollout, each a fresh permutation split into `minibatches`.
    epochs: int = 2
    minibatches: int = 2
    # Ratio clip ε of the surrogate.
    clip_eps: float = 0.2
    # Coefficient of KL(π || π_initial), the penalty that keeps the policy near where it started.
    kl_coef: float = 0.02
    # Entropy bonus coefficient.
    ent_coef: float = 0.0
    # Sampling temperature of the rollouts (log-probs are of logits / temperature).
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.rollout_batch < 1:
            raise ValueError(
                f"policy gradient: iterations={self.iterations} must be >= 0, rollout_batch={self.rollout_batch} >= 1"
            )
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError(
                f"policy gradient: epochs={self.epochs} and minibatches={self.minibatches} must be >= 1"
            )
        if self.clip_eps <= 0 or self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError(
                f"policy gradient: clip_eps={self.clip_eps}, temperature={self.temperature} and "
                f"learning_rate={self.learning_rate} must be > 0"
            )
        if self.kl_coef < 0 or self.ent_coef < 0:
            raise ValueError(
                f"policy gradient: kl_coef={self.kl_coef} and ent_coef={self.ent_coef} must be >= 0"
            )


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
