"""Direct preference optimisation (Rafailov et al. 2023), with the IPO variant, as a baseline to PPO-RLHF.

The implicit reward of a response is β (log π(y|x) - log π_ref(y|x)); the loss is Bradley–Terry on the
implicit rewards of the chosen and rejected responses. Reference log-probs are computed once, before
training, and travel with the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from oversight.models.transformer import Transformer
from oversight.training.sft import token_logprobs

LOSS_TYPES = ("sigmoid", "ipo")


def sequence_logprobs(
    model: Transformer, tokens: jax.Array, mask: jax.Array, loss_mask: jax.Array
) -> jax.Array:
    """Σ_t log π(y_t | x, y_<t) over the response tokens (loss_mask = 1) of (prompt + response) rows, (B,)."""
    logp = token_logprobs(model, tokens, mask)  # (B, T-1)
    return (logp * loss_mask[:, 1:].astype(jnp.float32)).sum(axis=-1)


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO loss from sequence log-probs (B,) of the chosen and rejected responses under policy and reference.

    sigmoid: -(1 - ε) log σ(β h) - ε log σ(-β h), h = (log π_c - log π_ref,c) - (log π_r - log π_ref,r);
    ε = label_smoothing is the conservative DPO of Mitchell (2023): labels flipped with probability ε.
    ipo: (h - 1 / (2β))², the IPO loss of Azar et al. (2023) (no label smoothing).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo: loss_type={loss_type!r} is not one of {LOSS_TYPES}")
    chosen_logratio = policy_chosen.astype(jnp.float32) - ref_chosen.astype(jnp.float32)  # (B,)
    rejected_logratio = policy_rejected.astype(jnp.float32) - ref_rejected.astype(jnp.float32)
    h = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(
            beta * h
        ) - label_smoothing * jax.nn.log_sigmoid(-beta * h)
    else:
        losses = jnp.square(h - 1.0 / (2.0 * beta))
    chosen_reward = beta * chosen_logratio  # the implicit rewards, (B,)
    rejected_reward = beta * rejected_logratio
    metrics = {
        "rewards/chosen": chosen_reward.mean(),
        "rewards/rejected": rejected_reward.mean(),
        "rewards/accuracy": (chosen_reward > rejected_reward).astype(jnp.float32).mean(),
        "rewards/margin": (chosen_reward - rejected_reward).mean(),
        "logps/chosen": policy_chosen.mean(),
        "logps/rejected": policy_rejected.mean(),
    }
    return losses.mean(), metrics


def dpo_batch_loss(
    model: Transformer,
    batch: dict[str, jax.Array],
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_fn(model, batch)` for the shared train step (bind the keyword arguments with functools.partial).

    batch: chosen_tokens, chosen_mask, chosen_loss_mask and rejected_* (B, T), right-padded rows as
    `sft.pack_examples` makes them; ref_chosen, ref_rejected (B,) from `sequence_logprobs` of the frozen
    reference. Chosen and rejected go through the model as one (2B, T) batch.
    """
    b = batch["chosen_tokens"].shape[0]
    both = {
        k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], axis=0)
        for k in ("tokens", "mask", "loss_mask")
    }
    logps = sequence_logprobs(model, both["tokens"], both["mask"], both["loss_mask"])  # (2B,)
    return dpo_loss(
        logps[:b], logps[b:], batch["ref_chosen"], batch["ref_rejected"], beta, label_smoothing, loss_type
    )
