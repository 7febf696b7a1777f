"""Dense reference renderer: every Gaussian at every pixel (SPEC §3). The test oracle.

Written for clarity, not speed: it builds an [N, H*W] array, so use it on tiny images only.
It shares nothing with the tiled backends beyond `params.covariance`: it inverts the 2x2
covariance explicitly and culls nothing but what the definition drops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P

__all__ = ["render_reference", "MAX_DENSE_ELEMENTS"]

# N * H * W above this is refused: the dense array would not fit comfortably.
MAX_DENSE_ELEMENTS = 1 << 28


def render_reference(params: P.GaussianParams, height: int, width: int,
                     sample_xy: jax.Array | None = None, clamp: bool = True) -> jax.Array:
    """Accumulated-sum render, [H, W, 3], clamped to [0, 1].

    Args:
      params: raw Gaussian parameters, N rows.
      height, width: the image size the normalized means refer to, in pixels.
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
    sigma = P.covariance(params)  # [N, 2, 2]
    sxx, sxy, syy = sigma[:, 0, 0], sigma[:, 0, 1], sigma[:, 1, 1]
    det = sxx * syy - sxy * sxy
    s = P.scale_activation(params.scales)
    singular = (s[:, 0] * s[:, 1]) == 0.0  # det(Sigma) = (sx sy)^2 exactly
    safe_det = jnp.where(singular | (det <= 0), 1.0, det)
    inv = jnp.stack([syy, -sxy, sxx], -1) / safe_det[:, None]  # [N, 3]: conic (a, b, c)
    d = mu[:, None, :] - pts[None, :, :]  # [N, M, 2]
    dx, dy = d[..., 0], d[..., 1]
    q = 0.5 * (inv[:, 0:1] * dx * dx + inv[:, 2:3] * dy * dy) + inv[:, 1:2] * dx * dy
    alpha = jnp.minimum(1.0, params.opacity * jnp.exp(-q))  # [N, M]
    keep = (q >= 0) & (alpha >= 1.0 / 255.0) & ~(singular | (det <= 0))[:, None]
    alpha = jnp.where(keep, alpha, 0.0)
    img = jnp.matmul(alpha.T, params.colors, precision="highest")  # [M, 3]
    img = img.reshape(out_shape + (3,))
    return jnp.clip(img, 0.0, 1.0) if clamp else img
