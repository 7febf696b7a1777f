"""The optimizer: an optax transform over labelled parameter groups (SPEC §6), and Adan as
GaussianImage runs it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from smartsplat_jax import params as P
from smartsplat_jax.train.config import FitConfig

__all__ = ["GROUPS", "make_optimizer", "adan", "scale_by_adan", "AdanState"]


class AdanState(NamedTuple):
    """Adan's state: the step count and, per parameter, the moments and the last gradient."""

    count: jax.Array  # int32 scalar: steps taken
    m: optax.Updates  # EMA of gradients
    d: optax.Updates  # EMA of gradient differences
    n: optax.Updates  # EMA of squared (gradient + b2 * difference)
    prev: optax.Updates  # the previous step's gradient


def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
                  eps: float = 1e-8) -> optax.GradientTransformation:
    """Adan's direction, exactly as GaussianImage's `optimizer.py` computes it (the official
    Adan implementation, `_single_tensor_adan`, without weight decay or clipping):

      diff_t = g_t - g_{t-1}   (0 at the first step)
      m_t = b1 m + (1 - b1) g_t;  d_t = b2 d + (1 - b2) diff_t
      n_t = b3 n + (1 - b3) (g_t + b2 diff_t)^2
      direction = (m_t / (1 - b1^t) + b2 d_t / (1 - b2^t)) / (sqrt(n_t / (1 - b3^t)) + eps)

    Two differences from `optax.adan` matter here: optax puts an `eps_root` of 1e-8 inside
    the square root, so the denominator never falls below 1e-4 while a pixel-mean L2 loss
    gives per-Gaussian gradients of 1e-7..1e-5 (the steps shrink 10-1000x); and optax
    weighs the difference terms by 1 - b2 where Adan's code weighs them by b2.
    """

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return AdanState(count=jnp.zeros([], jnp.int32), m=zeros(), d=zeros(), n=zeros(),
                         prev=zeros())

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        first = count == 1
        tm = jax.tree_util.tree_map
        diff = tm(lambda g, p: jnp.where(first, jnp.zeros_like(g), g - p), grads, state.prev)
        m = tm(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
        d = tm(lambda d, x: b2 * d + (1 - b2) * x, state.d, diff)
        n = tm(lambda n, g, x: b3 * n + (1 - b3) * jnp.square(g + b2 * x), state.n, grads, diff)
        bc1, bc2, bc3 = 1 - b1 ** t, 1 - b2 ** t, 1 - b3 ** t
        direction = tm(lambda m, d, n: (m / bc1 + b2 * d / bc2) / (jnp.sqrt(n / bc3) + eps),
                       m, d, n)
        return direction, AdanState(count=count, m=m, d=d, n=n, prev=grads)

    return optax.GradientTransformation(init, update)


def adan(learning_rate: optax.ScalarOrSchedule, **kwargs) -> optax.GradientTransformation:
    """GaussianImage's Adan (see `scale_by_adan`) at this rate or schedule (minimising)."""
    return optax.chain(scale_by_adan(**kwargs), optax.scale_by_learning_rate(learning_rate))

GROUPS = ("means", "scales", "rotation", "colors", "opacity")


def _labels() -> P.GaussianParams:
    return P.GaussianParams(means="means", scales="scales", rotation="rotation",
                            colors="colors", opacity="opacity")


def make_optimizer(config: FitConfig) -> optax.GradientTransformation:
    """Adam (beta 0.9/0.999, eps 1e-15) or Adan (`adan`: GaussianImage's, betas 0.98/0.92/0.99,
    eps 1e-8) per group; a zero rate freezes the group.

    With lr_halve_every = k > 0 every rate is halved each k steps (staircase).
    """

    def group(lr: float) -> optax.GradientTransformation:
        if lr == 0:
            return optax.set_to_zero()
        sched = lr if not config.lr_halve_every else optax.exponential_decay(
            lr, transition_steps=config.lr_halve_every, decay_rate=0.5, staircase=True)
        if config.optimizer == "adan":
            return adan(sched)
        return optax.adam(sched, b1=0.9, b2=0.999, eps=1e-15)

    rates = {g: getattr(config, f"lr_{g}") for g in GROUPS}
    return optax.multi_transform({g: group(lr) for g, lr in rates.items()}, _labels())
