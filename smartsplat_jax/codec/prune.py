"""Invisible Gaussians: found before a file is planned, and left out of it.

Long training leaves Gaussians that add nothing a renderer draws: collapsed to a fraction of
a pixel between pixel centres, or with a colour near zero. Each of them still costs a file
its bytes (about 7 per Gaussian). Measured (CPU, SmartSplat at CR 50, 20,000 steps, the
bound below): 131 of the 561 Gaussians of a 256^2 crop of camp_original (23 %) and 84 of
the 561 of a 256^2 crop of CLIC2020_5 (15 %) add less than 1e-8 each; after 10,000 steps
at CR 200 on 512-px versions of the hires photos, 2-4 % of N = 374.

Two rules:

  * The file leaves out every Gaussian that adds exactly nothing once quantized
    (`format.encode`, `dropped`): an opacity code that decodes to 0 in any set, and colour
    codes that all decode to 0 in an additive set (a blended one's black Gaussian still
    occludes). The sum (or blend) without them is the same, so the decoded render is too;
    `decode` gives N' <= N Gaussians.
  * `prune` sets to exactly 0 the colours of the Gaussians of an additive set whose removal
    moves the render by a mean squared amount of at most `max_mse` (a bound, not an
    estimate), so that they leave the file and rate control spends their bytes on the rest.
    `train.fit` prunes at the start of the quantization-aware phase, before the quantizer is
    planned, and keeps the pruned Gaussians frozen from then on (`FitConfig.prune_mse`);
    `pipeline.encode_trained` prunes before it plans a file for a set trained without that
    phase.

The bound. The rasterizer draws Gaussian i with weights w_i(p) = o_i G_i(p) <= max(o_i, 1)
on the pixels of its footprint (zero beyond it, where o_i G_i < 1/255), so its part of the
render has squared norm ||c_i w_i||^2 <= |c_i|^2 max(o_i, 1) m_i, with m_i = sum_p w_i(p)
the gradient of the sum of the unclamped render with respect to its colour (`render_mass`:
one render and its gradient). Removing a set S moves the unclamped render by at most
b(S) = sum_{i in S} |c_i| sqrt(max(o_i, 1) m_i) in norm (the triangle inequality), and the
clamped one by no more (the clamp is 1-Lipschitz). `invisible` takes the Gaussians in
increasing order of their term while b(S)^2 / (3 H W) <= max_mse.

The default `MAX_MSE`, 1e-8, is under 1 % of the rounding noise of an 8-bit image,
(1/255)^2 / 12 = 1.3e-6: at most 0.0004 dB at 40 dB PSNR.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P

__all__ = ["MAX_MSE", "render_mass", "invisible", "prune", "absent"]

MAX_MSE = 1e-8


@functools.partial(jax.jit, static_argnames=("height", "width"))
def render_mass(params: P.GaussianParams, height: int, width: int) -> jax.Array:
    """[N] m_i = sum_p w_i(p): each Gaussian's total weight on the pixels the xla rasterizer
    draws it on (unclamped; its colour does not enter), for an additive set."""
    from smartsplat_jax.render.xla import render_xla

    def total(colors):
        return jnp.sum(render_xla(params.replace(colors=colors), height, width,
                                  clamp=False)[..., 0])

    return jax.grad(total)(jnp.ones_like(params.colors))[:, 0]


def _check_max_mse(max_mse) -> float:
    if (isinstance(max_mse, bool) or not isinstance(max_mse, (int, float, np.floating))
            or not math.isfinite(max_mse) or max_mse < 0):
        raise ValueError(f"max_mse={max_mse!r} must be a finite number >= 0 (a mean squared "
                         "change of the render, for images in [0, 1]; 0 prunes nothing)")
    return float(max_mse)


def invisible(params: P.GaussianParams, height: int, width: int,
              max_mse: float = MAX_MSE) -> np.ndarray:
    """[N] bool: the Gaussians whose removal together moves the render of `params` (an
    additive set fitted at height x width px) by a mean squared amount of at most `max_mse`
    (module docstring). All False for a blended set, for max_mse = 0, or where a term is not
    finite.

    Raises:
      ValueError: max_mse not a finite number >= 0.
    """
    max_mse = _check_max_mse(max_mse)
    out = np.zeros(params.num, bool)
    if params.blend or params.num == 0 or max_mse == 0:
        return out
    m = np.asarray(render_mass(params, height, width), np.float64)
    c = np.linalg.norm(np.asarray(params.colors, np.float64), axis=-1)
    o = np.maximum(np.abs(np.asarray(params.opacity, np.float64)[:, 0]), 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        term = c * np.sqrt(np.maximum(m, 0.0) * o)
    term = np.where(np.isfinite(term), term, np.inf)
    order = np.argsort(term, kind="stable")
    total = np.cumsum(term[order])
    k = int(np.searchsorted(total, math.sqrt(max_mse * 3.0 * height * width), side="right"))
    out[order[:k]] = True
    return out


def prune(params: P.GaussianParams, height: int, width: int,
          max_mse: float = MAX_MSE) -> tuple[P.GaussianParams, int]:
    """(`params` with the colours of the `invisible` Gaussians set to exactly 0, the number of
    Gaussians whose colours are then 0). The shapes do not change; the file leaves these
    Gaussians out (module docstring). A blended set is returned as it is."""
    mask = invisible(params, height, width, max_mse)
    if mask.any():
        params = params.replace(colors=jnp.where(jnp.asarray(mask)[:, None],
                                                 jnp.zeros_like(params.colors), params.colors))
    return params, int(np.sum(absent(params)))


def absent(params: P.GaussianParams) -> np.ndarray:
    """[N] bool, on the host: the Gaussians that add nothing whatever their geometry: opacity
    exactly 0, or (additive sets) colours exactly 0."""
    o = np.asarray(params.opacity)[:, 0] == 0
    if params.blend:
        return o
    return o | np.all(np.asarray(params.colors) == 0, axis=-1)
