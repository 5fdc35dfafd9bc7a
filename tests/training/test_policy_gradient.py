"""The shared policy-gradient objective: REINFORCE on-policy, the clipped surrogate off-policy, by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oversight.training.policy_gradient import policy_gradient_loss


def test_on_policy_it_is_reinforce_with_the_callers_baseline():
    logp = jnp.log(jnp.array([[0.5, 0.25], [0.1, 0.8]]))  # (B=2, T=2)
    adv = jnp.array([[1.0, -1.0], [0.5, 2.0]])

    def loss(lp):
        return policy_gradient_loss(lp, adv)[0]

    # Loss value -mean_b Σ_t A (ρ = 1); gradient -(1/B) A, the gradient of -mean_b Σ_t A log π.
    assert float(loss(logp)) == pytest.approx(-(0.0 + 2.5) / 2)
    np.testing.assert_allclose(jax.grad(loss)(logp), -adv / 2, rtol=1e-6)
    reinforce = jax.grad(lambda lp: -jnp.mean(jnp.sum(adv * lp, axis=-1)))(logp)
    np.testing.assert_array_equal(jax.grad(loss)(logp), reinforce)
    # One advantage per row broadcasts over its actions.
    row = jnp.array([[1.0], [-2.0]])
    np.testing.assert_allclose(
        jax.grad(lambda lp: policy_gradient_loss(lp, row)[0])(logp), -jnp.broadcast_to(row, (2, 2)) / 2
    )


def test_clipped_surrogate_matches_a_hand_computed_case():
    ratio = jnp.array([[1.5, 1.1], [1.5, 0.5]])
    adv = jnp.array([[1.0, 2.0], [-1.0, -1.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    old = jnp.full((2, 2), math.log(0.2))
    logp = old + jnp.log(ratio)

    def loss(lp):
        return policy_gradient_loss(lp, adv, old, mask, clip_eps=0.2)

    value, stats = loss(logp)
    # Row 0: min(1.5, 1.2) = 1.2 (clipped) + min(2.2, 2.2) = 2.2; row 1: min(-1.5, -1.2) = -1.5 (+ masked).
    assert float(value) == pytest.approx(-(1.2 + 2.2 - 1.5) / 2, rel=1e-6)
    # d/dlogp of ρA is ρA where the unclipped term is the minimum, 0 where the clipped one is.
    grad = jax.grad(lambda lp: loss(lp)[0])(logp)
    np.testing.assert_allclose(grad, [[0.0, -2.2 / 2], [1.5 / 2, 0.0]], rtol=1e-5, atol=1e-7)
    assert float(stats["clip_fraction"]) == pytest.approx(2 / 3)
    k3 = lambda r: (r - 1) - math.log(r)  # noqa: E731
    assert float(stats["approx_kl"]) == pytest.approx((2 * k3(1.5) + k3(1.1)) / 3, rel=1e-5)
