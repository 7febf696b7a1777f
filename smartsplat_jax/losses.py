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
    then the hand-written one of `_ssim_to_target` (fused-ssim's; 2.7x faster than autodiff
    on CPU for 768 x 512) and no gradient flows to y. Otherwise both get autodiff gradients.
    """
    if y_is_constant:
        return _ssim_to_target(x, y)
    pad = ((filters.HALF, filters.HALF), (filters.HALF, filters.HALF), (0, 0))
    ssim_map, _ = filters.ssim_maps_valid(jnp.pad(x, pad), jnp.pad(y, pad))
    return jnp.mean(ssim_map)


def _target_stats(x: jax.Array, y: jax.Array):
    """Windowed statistics of [C, H, W] x and y, zero-padded 'same': mu_x, mu_y, e_xx, e_yy,
    e_xy, each [C, H, W]."""
    h = filters.HALF
    pad = ((0, 0), (h, h), (h, h))
    return filters.window_stats(jnp.pad(x, pad), jnp.pad(y, pad))


@jax.custom_vjp
def _ssim_to_target(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean 'same' SSIM of [H, W, C] x against a constant target y (see `ssim`)."""
    ssim_map, _ = filters.ssim_from_stats(*_target_stats(jnp.moveaxis(x, -1, 0),
                                                         jnp.moveaxis(y, -1, 0)))
    return jnp.mean(ssim_map)


def _ssim_to_target_fwd(x, y):
    # S = l * cs with l = A1 / B1, cs = A2 / B2 (filters.ssim_from_stats). The partial
    # derivatives of mean(S) with respect to each pixel's statistics:
    #   dS/de_xy = 2 A1 / (B1 B2),  dS/de_xx = -S / B2,
    #   dS/dmu_x = cs (2 mu_y B1 - 2 mu_x A1) / B1^2 + l (2 mu_x A2 / B2^2 - 2 mu_y / B2),
    # (s_xx = e_xx - mu_x^2 and s_xy = e_xy - mu_x mu_y carry mu_x into cs).
    xc, yc = jnp.moveaxis(x, -1, 0), jnp.moveaxis(y, -1, 0)
    mu_x, mu_y, e_xx, e_yy, e_xy = _target_stats(xc, yc)
    a1 = 2.0 * mu_x * mu_y + filters.C1
    b1 = mu_x * mu_x + mu_y * mu_y + filters.C1
    a2 = 2.0 * (e_xy - mu_x * mu_y) + filters.C2
    b2 = (e_xx - mu_x * mu_x) + (e_yy - mu_y * mu_y) + filters.C2
    lum, cs = a1 / b1, a2 / b2
    s = lum * cs
    inv_n = 1.0 / s.size
    d_mu = (cs * (2.0 * mu_y * b1 - 2.0 * mu_x * a1) / (b1 * b1)
            + lum * (2.0 * mu_x * a2 / (b2 * b2) - 2.0 * mu_y / b2))
    partials = jnp.concatenate([d_mu, -s / b2, 2.0 * a1 / (b1 * b2)], 0) * inv_n
    return jnp.mean(s), (xc, yc, partials)


def _ssim_to_target_bwd(res, g):
    xc, yc, partials = res
    c, h = xc.shape[0], filters.HALF
    # Back through the blur (onto the padded grid), then crop the padding off.
    back = filters.blur_adjoint(partials * g, filters.window_taps())[:, h:-h, h:-h]
    gx = back[:c] + 2.0 * xc * back[c:2 * c] + yc * back[2 * c:]
    return jnp.moveaxis(gx, 0, -1), jnp.zeros_like(jnp.moveaxis(yc, 0, -1))


_ssim_to_target.defvjp(_ssim_to_target_fwd, _ssim_to_target_bwd)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error over pixels and channels. Scalar."""
    return jnp.mean(jnp.abs(x - y))


def l2(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over pixels and channels. Scalar."""
    return jnp.mean(jnp.square(x - y))


def smartsplat_loss(rendered: jax.Array, target: jax.Array,
                    lambda_l1: float = LAMBDA_L1) -> jax.Array:
    """SmartSplat's loss: lambda * L1 + (1 - lambda) * (1 - SSIM). Scalar.

    Args:
      rendered: [H, W, 3] the render, in [0, 1].
      target: [H, W, 3] the ground truth, in [0, 1].
      lambda_l1: weight of the L1 term, in [0, 1].
    """
    ssim_value = ssim(rendered, target, y_is_constant=True)
    return lambda_l1 * l1(rendered, target) + (1.0 - lambda_l1) * (1.0 - ssim_value)
