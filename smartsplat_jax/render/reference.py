"""Dense reference renderer: every Gaussian at every pixel (SPEC §3). The test oracle.

Written for clarity, not speed: it builds an [N, H*W] array, so use it on tiny images only.
It is jitted (height, width and clamp static): one compile per size instead of one per op.
It shares nothing with the tiled backends beyond `params.covariance` (and so the scale floor
of `params.scale_activation`): it evaluates sigma(d) = 0.5 d^T Sigma^-1 d through the
Cholesky factor L of Sigma, 0.5 |L^-1 d|^2, with L's last entry from the exact determinant
det Sigma = (s_x s_y)^2, so sigma is never negative and the render and its autodiff gradients
are finite for every finite parameter set. It culls nothing but what the definition drops.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P

__all__ = ["render_reference", "MAX_DENSE_ELEMENTS"]

# N * H * W above this is refused: the dense array would not fit comfortably.
MAX_DENSE_ELEMENTS = 1 << 28


@functools.partial(jax.jit, static_argnames=("height", "width", "clamp"))
def render_reference(params: P.GaussianParams, height: int, width: int,
                     sample_xy: jax.Array | None = None, clamp: bool = True) -> jax.Array:
    """Accumulated-sum render, [H, W, 3], clamped to [0, 1].

    Args:
      params: raw Gaussian parameters, N rows (`GaussianParams` or `CholeskyParams`).
      height, width: the image size the normalized means refer to, in pixels (static).
      sample_xy: optional [H', W', 2] pixel coordinates (x, y) at which to evaluate the
        image instead of the integer pixel grid of height x width (used to test resampling).
      clamp: clamp to [0, 1] (the definition); False returns the raw sum (for tests).

    Returns:
      [H, W, 3] (or [H', W', 3]) float image.
    """
    if sample_xy is None:
        ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
        sample_xy = jnp.stack([xs, ys], -1).astype(params.means.dtype)
    out_shape = sample_xy.shape[:2]
    n = params.means.shape[0]
    if n * out_shape[0] * out_shape[1] > MAX_DENSE_ELEMENTS:
        raise ValueError(f"reference renderer: N * pixels = {n} * {out_shape[0] * out_shape[1]} "
                         f"is over {MAX_DENSE_ELEMENTS}; use the 'xla' backend")
    pts = sample_xy.reshape(-1, 2)  # [M, 2]
    mu = P.normalized_to_pixel(params.means, height, width)  # [N, 2]
    if isinstance(params, P.CholeskyParams):  # L given: Sigma = L L^T
        valid = jnp.all(jnp.isfinite(params.cholesky), -1) & jnp.all(jnp.isfinite(mu), -1)
        l11, l21, l22 = P.cholesky_factor(
            jnp.where(valid[:, None], params.cholesky, jnp.asarray([1.0, 0.0, 1.0])))
    else:
        sigma = P.covariance(params)  # [N, 2, 2]
        s = P.scale_activation(params.scales)
        valid = jnp.all(jnp.isfinite(sigma), (-2, -1)) & jnp.all(jnp.isfinite(mu), -1)
        # Cholesky Sigma = L L^T, L = [[l11, 0], [l21, l22]], l22 = sqrt(det) / l11.
        sxx = jnp.where(valid, sigma[:, 0, 0], 1.0)
        l11 = jnp.sqrt(sxx)
        l21 = jnp.where(valid, sigma[:, 1, 0], 0.0) / l11
        l22 = jnp.where(valid, s[:, 0] * s[:, 1], 1.0) / l11
    d = mu[:, None, :] - pts[None, :, :]  # [N, M, 2]
    d = jnp.where(valid[:, None, None], d, 0.0)
    z1 = d[..., 0] / l11[:, None]
    z2 = (d[..., 1] - l21[:, None] * z1) / l22[:, None]
    q = 0.5 * (z1 * z1 + z2 * z2)
    alpha = jnp.minimum(1.0, params.opacity * jnp.exp(-q))  # [N, M]
    keep = (alpha >= 1.0 / 255.0) & valid[:, None]
    alpha = jnp.where(keep, alpha, 0.0)
    img = jnp.matmul(alpha.T, params.colors, precision="highest")  # [M, 3]
    img = img.reshape(out_shape + (3,))
    return jnp.clip(img, 0.0, 1.0) if clamp else img
