"""Rendering at another resolution: rescale Gaussian parameters from (H, W) to (H', W').

Means are normalized, so they stay. Pixel-space covariances scale as
Sigma' = D Sigma D with D = diag(W'/W, H'/H). With an unchanged aspect ratio this is just
scales * (W'/W); otherwise Sigma' is re-decomposed into two standard deviations and an angle
(closed-form 2x2 eigen-decomposition), so the rescaled Gaussian is exactly the stretched one.
Rendering the result at (H', W') samples the same continuous image at the new pixel centres
(x' = x * W'/W in pixels); the alpha >= 1/255 cut-off is invariant under the stretch.
"""

from __future__ import annotations

import jax.numpy as jnp

from smartsplat_jax import params as P

__all__ = ["rescale_params", "output_size"]


def output_size(height: int, width: int, *, out_width: int | None = None,
                out_height: int | None = None, scale: float | None = None,
                max_side: int = 65_536) -> tuple[int, int]:
    """The (height, width) to render an image fitted at height x width px.

    Give at most one of: `scale` (both sides times scale, rounded, at least 1 px), or
    `out_width` and/or `out_height` (one alone keeps the aspect ratio, rounded; both set the
    size exactly). Nothing given: the original size.

    Raises:
      ValueError: conflicting or invalid options, or a side outside [1, max_side] px.
    """
    if scale is not None and (out_width is not None or out_height is not None):
        raise ValueError("give either scale or width/height, not both")
    for name, v in (("width", out_width), ("height", out_height)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= max_side):
            raise ValueError(f"{name}={v!r} must be an integer number of pixels in [1, {max_side}]")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < float("inf")):
            raise ValueError(f"scale={scale!r} must be a finite number > 0")
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
    elif out_width is not None and out_height is not None:
        size = (out_height, out_width)
    elif out_width is not None:
        size = (max(1, round(height * out_width / width)), out_width)
    elif out_height is not None:
        size = (out_height, max(1, round(width * out_height / height)))
    else:
        size = (height, width)
    if max(size) > max_side:
        raise ValueError(f"output size {size[1]}x{size[0]} px exceeds the limit of {max_side} px "
                         "per side; use a smaller scale")
    return size


def rescale_params(params: P.GaussianParams, src_hw: tuple[int, int],
                   dst_hw: tuple[int, int]) -> P.GaussianParams:
    """Returns parameters that render at dst_hw = (H', W') what `params` render at src_hw.

    Args:
      params: raw parameters fitted at src_hw = (H, W) pixels.
      src_hw, dst_hw: (height, width) in pixels, positive integers.
    """
    for name, (h, w) in (("src_hw", src_hw), ("dst_hw", dst_hw)):
        if not all(isinstance(v, int) and v >= 1 for v in (h, w)):
            raise ValueError(f"{name}={(h, w)!r} must be two positive integers (height, width)")
    fy = dst_hw[0] / src_hw[0]
    fx = dst_hw[1] / src_hw[1]
    if fx == fy:
        return params.replace(scales=params.scales * fx)
    sigma = P.covariance(params)
    sxx = sigma[:, 0, 0] * fx * fx
    syy = sigma[:, 1, 1] * fy * fy
    sxy = sigma[:, 0, 1] * fx * fy
    # Eigen-decomposition of [[sxx, sxy], [sxy, syy]]: angle of the first axis and variances.
    half_tr = 0.5 * (sxx + syy)
    rad = jnp.sqrt(jnp.maximum((0.5 * (sxx - syy)) ** 2 + sxy**2, 0.0))
    lam1 = jnp.maximum(half_tr + rad, 0.0)
    lam2 = jnp.maximum(half_tr - rad, 0.0)
    theta = 0.5 * jnp.arctan2(2.0 * sxy, sxx - syy)  # in (-pi/2, pi/2]
    # Any angle modulo pi describes the same Gaussian; keep it inside (pi/2, 3pi/2] so that the
    # raw parameter (a logit) stays finite.
    theta = theta + jnp.pi
    scales = jnp.stack([jnp.sqrt(lam1), jnp.sqrt(lam2)], -1)
    return params.replace(scales=scales.astype(params.scales.dtype),
                          rotation=P.angle_to_raw(theta)[:, None].astype(params.rotation.dtype))
