"""K-nearest-neighbour scales for the uniform points (SPEC §4.5).

s(x) = sqrt((1/K) * sum over the K nearest points q of X of |x - q|^2), K = 3, where X is the
set of all points (variational and uniform) and x itself is in X: it is its own nearest
neighbour (distance 0), so the sum runs over x and its K - 1 nearest other points. With
|X| < K the mean runs over all of X.

Exact, via a grid with cells of the mean spacing sqrt(HW / |X|): rings of cells at growing
Chebyshev distance R are scanned, each query until its (K-1)-th best distance is <= R * cell
(no unscanned point can then be closer); each ring reads only the queries still open. Each cell is read whole (its largest occupancy is the
static bound), and queries are processed in chunks, so memory is O(|X| + chunk * cells * occ).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax.init import grid as G
from smartsplat_jax.init import spread

__all__ = ["K_NEIGHBOURS", "knn_scales"]

K_NEIGHBOURS = 3


@functools.partial(jax.jit, static_argnames=("occ", "k"))
def _ring(best, q_xy, q_idx, pts, sorted_ids, order, spec, offsets, occ: int, k: int):
    """Merges the points of the cells at `offsets` into each query's k-1 best squared distances."""
    idx, _ = G.neighbour_indices(spec, sorted_ids, order, q_xy, offsets, occ)
    d2 = jnp.sum((q_xy[:, None, :] - pts[jnp.maximum(idx, 0)]) ** 2, -1)
    d2 = jnp.where((idx >= 0) & (idx != q_idx[:, None]), d2, jnp.inf)
    merged = jnp.concatenate([best, d2], axis=1)
    return -jax.lax.top_k(-merged, k - 1)[0]


def knn_scales(xy: np.ndarray, query_index: np.ndarray, height: int, width: int, *,
               k: int = K_NEIGHBOURS, chunk: int = 1 << 15, devices=None) -> np.ndarray:
    """Scales of the points `xy[query_index]` from their K nearest points in `xy` (self included).

    Args:
      xy: [M, 2] pixel coordinates of all points X.
      query_index: [Q] int indices into xy of the points to compute scales for.
      height, width: the image in pixels (the grid's extent).
      k: K, self included.
      chunk: queries per jitted call.
      devices: None (one device) or several jax devices that share each call's queries
        (`init.spread`; the same scales to float rounding).

    Returns:
      [Q] float32 scales in pixels.
    """
    devices = spread.check_devices(devices)
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    query_index = np.asarray(query_index, np.int32).reshape(-1)
    m, nq = xy.shape[0], query_index.shape[0]
    if nq == 0:
        return np.zeros((0,), np.float32)
    if k < 2 or m < 2:
        return np.zeros((nq,), np.float32)
    spec = G.make_spec(height, width, max(math.sqrt(height * width / m), 1e-3))
    pts = jnp.asarray(xy)
    sorted_ids, order = G.build(spec.traced(), pts, jnp.ones(m, bool))
    occ = G.pow2_ceil(max(1, G.max_occupancy(spec, sorted_ids)))
    shared = spread.replicate((pts, sorted_ids, order, spec.traced()), devices)
    kk = min(k, m)
    out = np.empty(nq, np.float32)
    size = min(chunk, G.pow2_ceil(nq))
    cell2 = lambda r: (r * spec.cell) ** 2  # noqa: E731
    last_ring = max(spec.ncx, spec.ncy) + 1  # covers the whole grid
    for c0 in range(0, nq, size):
        n_real = min(size, nq - c0)
        qi = query_index[c0 : c0 + n_real]
        best = np.full((n_real, kk - 1), np.inf, np.float32)
        active = np.arange(n_real)  # the queries whose k-1 best may still improve
        for radius in range(last_ring + 1):
            # Only the open queries read the next ring (padded by repetition to a power of
            # two, so that few sizes are compiled): most close within two rings.
            sel = np.resize(active, spread.round_up(G.pow2_ceil(active.size), devices))
            batch = spread.put_batch((best[sel], xy[qi[sel]], qi[sel]), devices)
            got = np.asarray(_ring(*batch, *shared,
                                   spread.replicate(G.ring_offsets(radius), devices),
                                   occ=occ, k=kk))
            best[active] = got[: active.size]
            active = active[best[active, -1] > cell2(radius)]
            if active.size == 0:
                break
        out[c0 : c0 + n_real] = np.sqrt(np.sum(best, axis=1) / kk)
    return out
