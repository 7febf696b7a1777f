"""The optimizer: an optax transform over labelled parameter groups (SPEC §6)."""

from __future__ import annotations

import optax

from smartsplat_jax import params as P
from smartsplat_jax.train.config import FitConfig

__all__ = ["GROUPS", "make_optimizer"]

GROUPS = ("means", "scales", "rotation", "colors", "opacity")


def _labels() -> P.GaussianParams:
    return P.GaussianParams(means="means", scales="scales", rotation="rotation",
                            colors="colors", opacity="opacity")


def make_optimizer(config: FitConfig) -> optax.GradientTransformation:
    """Adam (beta 0.9/0.999, eps 1e-15) or Adan per group; a zero rate freezes the group.

    With lr_halve_every = k > 0 every rate is halved each k steps (staircase).
    """

    def group(lr: float) -> optax.GradientTransformation:
        if lr == 0:
            return optax.set_to_zero()
        sched = lr if not config.lr_halve_every else optax.exponential_decay(
            lr, transition_steps=config.lr_halve_every, decay_rate=0.5, staircase=True)
        if config.optimizer == "adan":
            return optax.adan(sched)
        return optax.adam(sched, b1=0.9, b2=0.999, eps=1e-15)

    rates = {g: getattr(config, f"lr_{g}") for g in GROUPS}
    return optax.multi_transform({g: group(lr) for g, lr in rates.items()}, _labels())
