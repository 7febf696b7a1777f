"""The optimizer (SPEC §6): a direction (Adam, or Adan as GaussianImage runs it) and a
learning rate per parameter group, with the step's hyperparameters as traced values."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from smartsplat_jax.train.config import FitConfig

__all__ = ["GROUPS", "Hyperparams", "hyperparams", "learning_rates", "make_optimizer",
           "direction", "scale_by_group_rates", "adan", "scale_by_adan", "AdanState"]


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

GROUPS = ("means", "scales", "rotation", "colors", "opacity")  # GaussianParams' leaf order
# The rate of each parameter field: CholeskyParams' `cholesky` (the covariance) takes the
# scales' rate.
_RATE_INDEX = {**{g: i for i, g in enumerate(GROUPS)}, "cholesky": GROUPS.index("scales")}


class Hyperparams(NamedTuple):
    """The hyperparameters of a training step that are traced values, not compile-time
    constants: changing any of them (a learning rate, its schedule, a phase's factor, the
    loss weight, the colour box) never recompiles the step. Built by `hyperparams(config)`.

    Attributes:
      rates: [5] float32, the base learning rate of each group in `GROUPS` order (means in
        normalized units, scales in pixels); 0 freezes a group.
      halve_every: int32 scalar; every rate is halved each this many steps (0: constant).
      lambda_l1: float32 scalar, the L1 weight of the SmartSplat loss.
      qat_lr_scale: float32 scalar, the factor on every rate in the quantization-aware phase.
      color_lo, color_hi: float32 scalars, the box colours are projected into after every
        update (-inf, inf: no projection).
    """

    rates: jax.Array
    halve_every: jax.Array
    lambda_l1: jax.Array
    qat_lr_scale: jax.Array
    color_lo: jax.Array
    color_hi: jax.Array


def hyperparams(config: FitConfig) -> Hyperparams:
    """The traced hyperparameters of `config` (see `Hyperparams`)."""
    lo, hi = config.color_bounds if config.color_bounds is not None else (-math.inf, math.inf)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return Hyperparams(rates=f32([getattr(config, f"lr_{g}") for g in GROUPS]),
                       halve_every=jnp.asarray(config.lr_halve_every, jnp.int32),
                       lambda_l1=f32(config.lambda_l1), qat_lr_scale=f32(config.qat_lr_scale),
                       color_lo=f32(lo), color_hi=f32(hi))


def learning_rates(hyper: Hyperparams, step: jax.Array) -> jax.Array:
    """[5] the learning rate of each group at `step` (0-based count of updates taken): the
    base rates, halved every `halve_every` steps (staircase) when that is > 0."""
    k = hyper.halve_every
    halvings = jnp.where(k > 0, step // jnp.maximum(k, 1), 0)
    return hyper.rates * jnp.exp2(-halvings.astype(jnp.float32))


class GroupRatesState(NamedTuple):
    """The step count of `scale_by_group_rates` (int32 scalar: updates taken)."""

    count: jax.Array


def scale_by_group_rates(hyper: Hyperparams) -> optax.GradientTransformation:
    """Multiplies each group's direction by minus its learning rate at the current step
    (`learning_rates`); the rates may be traced values. Works on `GaussianParams` and
    `CholeskyParams` (whose `cholesky` takes the scales' rate).

    A blended set (`blend=True`, the 3DGS baseline, `train.gs3d`) steps its scales in log
    space and its opacities in logit space, as 3DGS parameterises them (s = exp(raw),
    o = sigmoid(raw)): the step of a scale is its rate times |s| times the direction, that of
    an opacity its rate times o (1 - o) times the direction, the raw-space steps to first
    order. This needs `params` in `update` (optax passes them)."""

    def init(params):
        del params
        return GroupRatesState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        rates = learning_rates(hyper, state.count)
        scaled = updates.replace(**{
            name: -rates[_RATE_INDEX[name]].astype(getattr(updates, name).dtype)
            * getattr(updates, name) for name in updates.leaf_names})
        if updates.blend:
            if params is None:
                raise ValueError("a blended set's scale steps are relative: pass params to "
                                 "update")
            o = jnp.clip(params.opacity, 0.0, 1.0)
            scaled = scaled.replace(scales=scaled.scales * jnp.abs(params.scales),
                                    opacity=scaled.opacity * o * (1.0 - o))
        return scaled, GroupRatesState(count=state.count + 1)

    return optax.GradientTransformation(init, update)


def direction(optimizer: str) -> optax.GradientTransformation:
    """The unit-rate direction of an optimizer name: "adam" (beta 0.9/0.999, eps 1e-15, SPEC
    §6) or "adan" (`scale_by_adan`, GaussianImage's)."""
    if optimizer == "adan":
        return scale_by_adan()
    if optimizer == "adam":
        return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-15)
    raise ValueError(f"optimizer={optimizer!r} must be one of adam, adan")


def make_optimizer(config: FitConfig, hyper: Hyperparams | None = None
                   ) -> optax.GradientTransformation:
    """Adam (beta 0.9/0.999, eps 1e-15) or Adan (`adan`: GaussianImage's, betas 0.98/0.92/0.99,
    eps 1e-8) over the whole `GaussianParams`, then each group at its own rate
    (`scale_by_group_rates`); a zero rate freezes the group.

    With lr_halve_every = k > 0 every rate is halved each k steps (staircase). `hyper`: the
    traced hyperparameters to use (`fit` passes them so that new rates never recompile);
    None: `hyperparams(config)`. Only `config.optimizer` is then read from `config`.
    """
    hyper = hyperparams(config) if hyper is None else hyper
    return optax.chain(direction(config.optimizer), scale_by_group_rates(hyper))
