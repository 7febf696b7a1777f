"""Exclusion-based uniform sampling (SPEC §4.5).

n points are drawn uniformly (continuous coordinates) over [0, W) x [0, H), each at distance
>= r from every existing (variational) point and from every other accepted point. Parallel
dart throwing, in rounds of at most `round_size` candidates:
  * a candidate is rejected if an existing point lies within r (grid query, 3x3 cells of
    side r), or if a candidate of lower index in the same round lies within r;
  * accepted candidates join the existing points for the next round.
Cells holding more points than the query reads (`occ_cap`, a dense cluster) reject the
candidates around them: rejections may be conservative, acceptances are always exact.
When rounds stop making progress (fewer than 1/1000 of the candidates accepted twice in a
row), r shrinks by `shrink`; after `max_rounds` the remaining points are drawn with r = 0.
The count is therefore always exactly n, and the radius actually used is reported.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax.init import grid as G

__all__ = ["sample_uniform_excluding"]

@functools.partial(jax.jit, static_argnames=("size", "occ_e", "occ_c"))
def _round(key, pts, sorted_e, order_e, radius, spec: G.GridSpec, extent, size: int,
           occ_e: int, occ_c: int):
    """One round of dart throwing: ([size, 2] candidates, [size] accepted).

    extent: [2] float32 (W, H). Everything but the sizes is traced (no recompiles).
    """
    cands = jax.random.uniform(key, (size, 2), pts.dtype) * extent
    # Keep candidates strictly inside [0, W) x [0, H) despite float rounding.
    cands = jnp.minimum(cands, extent * (1 - 1e-7))
    r2 = radius * radius
    block = jnp.asarray(G.BLOCK_3x3)
    idx, ovf = G.neighbour_indices(spec, sorted_e, order_e, cands, block, occ_e)
    d2 = jnp.sum((cands[:, None, :] - pts[jnp.maximum(idx, 0)]) ** 2, -1)
    near = jnp.any((idx >= 0) & (d2 < r2), axis=1) | ovf
    sorted_c, order_c = G.build(spec, cands, jnp.ones(size, bool))
    idx2, ovf2 = G.neighbour_indices(spec, sorted_c, order_c, cands, block, occ_c)
    d2c = jnp.sum((cands[:, None, :] - cands[jnp.maximum(idx2, 0)]) ** 2, -1)
    lower = (idx2 >= 0) & (idx2 < jnp.arange(size, dtype=jnp.int32)[:, None])
    conflict = jnp.any(lower & (d2c < r2), axis=1) | ovf2
    return cands, ~near & ~conflict


def sample_uniform_excluding(key: jax.Array, existing_xy: np.ndarray, n: int, height: int,
                             width: int, radius: float, *, round_size: int = 1 << 16,
                             occ_cap: int = 64, shrink: float = 0.9,
                             max_rounds: int = 200) -> tuple[np.ndarray, dict]:
    """Draws exactly n points at distance >= radius from `existing_xy` and from each other.

    Args:
      key: PRNG key.
      existing_xy: [V, 2] pixel coordinates (x, y) of the points to keep away from.
      n: number of points to draw.
      height, width: the image, in pixels.
      radius: the exclusion radius asked for, in pixels.

    Returns:
      xy: [n, 2] float32 pixel coordinates in [0, W) x [0, H).
      info: radius_asked, radius_used, shrink_factor (used / asked), shrink_steps, rounds,
        unconstrained (points drawn with r = 0 after max_rounds).
    """
    existing_xy = np.asarray(existing_xy, np.float32).reshape(-1, 2)
    v = existing_xy.shape[0]
    info = {"radius_asked": float(radius), "radius_used": float(radius), "shrink_factor": 1.0,
            "shrink_steps": 0, "rounds": 0, "unconstrained": 0}
    if n <= 0:
        return np.zeros((0, 2), np.float32), info
    pts = np.zeros((v + n, 2), np.float32)
    pts[:v] = existing_xy
    filled = 0
    size = min(round_size, G.pow2_ceil(max(256, 2 * n)))
    r = float(radius)
    stalled = 0
    keys = jax.random.split(key, max_rounds + 1)
    for rnd in range(max_rounds):
        if filled == n:
            break
        info["rounds"] = rnd + 1
        spec = G.make_spec(height, width, max(r, 1e-6))
        valid = np.arange(v + n) < v + filled
        sorted_e, order_e = G.build(spec.traced(), jnp.asarray(pts), jnp.asarray(valid))
        occ_e = min(occ_cap, G.pow2_ceil(max(1, G.max_occupancy(spec, sorted_e))))
        cands, ok = _round(keys[rnd], jnp.asarray(pts), sorted_e, order_e, jnp.float32(r),
                           spec.traced(), jnp.asarray([width, height], jnp.float32), size=size,
                           occ_e=occ_e, occ_c=8)
        new = np.asarray(cands)[np.asarray(ok)][: n - filled]
        pts[v + filled : v + filled + len(new)] = new
        filled += len(new)
        stalled = stalled + 1 if len(new) < max(1, size // 1000) else 0
        if stalled >= 2 and filled < n:
            r *= shrink
            info["shrink_steps"] += 1
            stalled = 0
    if filled < n:  # give up on the radius for the rest rather than return fewer points
        rest = n - filled
        extra = np.asarray(jax.random.uniform(keys[-1], (rest, 2))) * [width, height]
        pts[v + filled :] = np.minimum(extra, np.array([width, height]) * (1 - 1e-7))
        info["unconstrained"] = rest
        r = 0.0
    info["radius_used"] = r
    info["shrink_factor"] = r / radius if radius > 0 else 1.0
    return pts[v:].copy(), info
