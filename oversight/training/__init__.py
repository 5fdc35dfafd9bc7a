"""Losses, jitted steps and the shared training loop (evaluation, checkpoints, NaN guard, tracking)."""
