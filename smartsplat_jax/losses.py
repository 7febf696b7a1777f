"""Differentiable training losses (SPEC §5).

L = lambda_l * mean|I_hat - I| + (1 - lambda_l) * (1 - SSIM(I_hat, I)), lambda_l = 0.9 by
default (the paper; the authors' code used 0.8). SSIM: 11x11 Gaussian window, sigma 1.5,
C1 = 0.01^2, C2 = 0.03^2, data range 1, zero padding with 'same' output size (fused-ssim's
definition), mean over pixels and channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smartsplat_jax import filters

__all__ = ["LAMBDA_L1", "ssim", "l1", "l2", "smartsplat_loss"]

LAMBDA_L1 = 0.9


def ssim(x: jax.Array, y: jax.Array, *, y_is_constant: bool = False) -> jax.Array:
    """Mean SSIM of two [H, W, C] images in [0, 1], zero-padded 'same' (fused-ssim). Scalar.

    y_is_constant: y is a target that needs no gradient: the gradient with respect to x is
    then the hand-written one of `filters.weighted_ssim_to_target` (fused-ssim's) and no
    gradient flows to y. Otherwise both get autodiff gradients. With y_is_constant the
    program is lowered for a training step inside a compiled loop (`lax.scan`, as
    `train.fit` runs it); on CPU a plain jitted call on a large image is slow (0.54 s for
    forward+backward at 768 x 512): evaluate with `metrics.ssim`.
    """
    if y_is_constant:
        return _ssim_to_target(x, y)
    pad = ((filters.HALF, filters.HALF), (filters.HALF, filters.HALF), (0, 0))
    ssim_map, _ = filters.ssim_maps_valid(jnp.pad(x, pad), jnp.pad(y, pad))
    return jnp.mean(ssim_map)


def _ssim_to_target(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean 'same' SSIM of [H, W, C] x against a constant target y (see `ssim`)."""
    return filters.weighted_ssim_to_target(x, y, 1.0 / x.size, filters.HALF)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over pixels and channels. Scalar."""
    return jnp.mean(jnp.abs(x - y))


def l2(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over pixels and channels. Scalar."""
    return jnp.mean(jnp.square(x - y))


def smartsplat_loss(rendered: jax.Array, target: jax.Array,
                    lambda_l1: float = LAMBDA_L1) -> jax.Array:
    """SmartSplat's loss: lambda * L1 + (1 - lambda) * (1 - SSIM). Scalar. A training
    loss: fast inside a compiled loop of steps (see `ssim`'s y_is_constant).

    Args:
      rendered: [H, W, 3] the render, in [0, 1].
      target: [H, W, 3] the ground truth, in [0, 1].
      lambda_l1: weight of the L1 term, in [0, 1].
    """
    ssim_value = ssim(rendered, target, y_is_constant=True)
    return lambda_l1 * l1(rendered, target) + (1.0 - lambda_l1) * (1.0 - ssim_value)
