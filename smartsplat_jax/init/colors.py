"""Scale-adaptive colour: the Gaussian-weighted median under each Gaussian (SPEC §4.6).

For a Gaussian at pixel position x with scale s, taps sit at x + (a, b) * s / 4 for
a, b in {-4..4} with sqrt(a^2 + b^2) <= 4.5 (69 taps); each is sampled bilinearly (pixel
centres at integer coordinates, positions clamped to the image) and weighted by
exp(-(a^2 + b^2) / 32), a Gaussian of standard deviation s in pixels. Per channel, the
colour is the smallest sample whose normalized cumulative weight, samples sorted ascending,
reaches 0.5. (The authors mix grid units and pixels in the weight; this is scale-consistent.)
Points are processed in chunks, so memory is O(chunk * 69) beyond the image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax.init import spread
from smartsplat_jax.init.grid import pow2_ceil

__all__ = ["TAPS", "TAP_WEIGHTS", "bilinear", "weighted_median_colors"]


def _taps() -> tuple[np.ndarray, np.ndarray]:
    ab = np.array([(a, b) for b in range(-4, 5) for a in range(-4, 5) if a * a + b * b <= 20.25],
                  np.float32)
    return ab, np.exp(-(ab**2).sum(1) / 32.0).astype(np.float32)


TAPS, TAP_WEIGHTS = _taps()


def bilinear(image: jax.Array, xy: jax.Array) -> jax.Array:
    """Samples [H, W, C] at [..., 2] pixel positions (x, y), clamped to the image -> [..., C]."""
    h, w = image.shape[:2]
    x = jnp.clip(xy[..., 0], 0.0, w - 1.0)
    y = jnp.clip(xy[..., 1], 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, max(w - 2, 0)).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, max(h - 2, 0)).astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _flip(b: jax.Array) -> jax.Array:
    """Maps float32 bit patterns (as int32) to int32 keys in the floats' order, and back."""
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@jax.jit
def _chunk_median(image, xy, scale):
    """[P, C] weighted medians for P Gaussians (see the module docstring).

    The median is the smallest sample v whose cumulative weight W(v) = sum of the weights of
    the samples <= v reaches half the total. The samples alone are sorted (as int32 keys: a
    single-operand integer sort, several times faster on CPU than sorting values with their
    weights), then a bisection over the sorted positions finds the first v with W(v) >= 1/2
    (W is non-decreasing along them), each probe summing the weights directly: ceil(log2 T)
    probes of T taps. The result is the cumulative-sum definition's, up to float rounding."""
    pos = xy[:, None, :] + jnp.asarray(TAPS)[None] * (scale[:, None, None] / 4.0)  # [P, T, 2]
    samples = jnp.swapaxes(bilinear(image, pos), 1, 2)  # [P, C, T]
    taps = samples.shape[-1]
    wts = jnp.asarray(TAP_WEIGHTS / TAP_WEIGHTS.sum())
    keys = jnp.sort(_flip(jax.lax.bitcast_convert_type(samples, jnp.int32)), axis=-1)
    ordered = jax.lax.bitcast_convert_type(_flip(keys), jnp.float32)  # the samples, ascending
    lo = jnp.zeros(samples.shape[:2], jnp.int32)
    hi = jnp.full(samples.shape[:2], taps - 1, jnp.int32)  # W(largest) = 1: always reaches
    for _ in range(max(1, math.ceil(math.log2(taps)))):
        mid = (lo + hi) // 2
        v = jnp.take_along_axis(ordered, mid[..., None], axis=-1)
        reached = jnp.sum(jnp.where(samples <= v, wts, 0.0), axis=-1) >= 0.5 - 1e-6
        hi, lo = jnp.where(reached, mid, hi), jnp.where(reached, lo, mid + 1)
    return jnp.take_along_axis(ordered, lo[..., None], axis=-1)[..., 0]


def weighted_median_colors(image: jax.Array, xy: np.ndarray, scale: np.ndarray, *,
                           chunk: int = 1 << 13, devices=None) -> np.ndarray:
    """[N, 3] colours for Gaussians at pixel positions xy [N, 2] with scales [N] (pixels).

    `chunk` Gaussians per jitted call (per device, when `devices` lists several jax devices
    that share each chunk: `init.spread`, the same colours to float rounding)."""
    devices = spread.check_devices(devices)
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    scale = np.asarray(scale, np.float32).reshape(-1)
    n = xy.shape[0]
    out = np.empty((n, image.shape[2]), np.float32)
    size = spread.round_up(min(chunk * spread.count(devices), pow2_ceil(n)), devices)
    image = spread.replicate(image, devices)
    for c0 in range(0, n, size):
        idx = np.resize(np.arange(c0, min(c0 + size, n)), size)
        res = _chunk_median(image, spread.put_batch(xy[idx], devices),
                            spread.put_batch(scale[idx], devices))
        out[c0 : min(c0 + size, n)] = np.asarray(res)[: min(size, n - c0)]
    return out
