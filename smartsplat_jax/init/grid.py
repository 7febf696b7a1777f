"""A uniform spatial grid over points, for neighbour queries in near-linear time.

Points are bucketed into square cells of side `cell` pixels; the cell ids are sorted, so the
points of one cell are contiguous and found with a binary search. Memory is O(points) (no
per-cell table), which keeps a 16K image with millions of points small. A query visits a
static set of cell offsets and, in each cell, at most `occ` points (a static bound, usually
the largest occupancy, measured on the host and rounded up to a power of two so that
recompilations are rare). `neighbour_indices` also reports, per query, whether some visited
cell held more than `occ` points, so callers can either be conservative or raise `occ`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GridSpec", "BLOCK_3x3", "pow2_ceil", "make_spec", "build", "max_occupancy", "neighbour_indices",
           "ring_offsets"]

_MAX_CELLS = (1 << 31) - 2


class GridSpec(NamedTuple):
    """Cells of side `cell` pixels covering [0, ncx * cell) x [0, ncy * cell).

    A pytree: jitted functions take it as traced data, so a new grid does not recompile.
    """

    cell: float
    ncx: int
    ncy: int

    def traced(self) -> "GridSpec":
        """The same spec as JAX scalars (float32 cell, int32 counts)."""
        return GridSpec(jnp.float32(self.cell), jnp.int32(self.ncx), jnp.int32(self.ncy))


def make_spec(height: float, width: float, cell: float) -> GridSpec:
    """A grid over [0, width) x [0, height) with cells of at least `cell` pixels.

    The cell grows if needed so that the number of cells fits in int32.
    """
    cell = float(cell)
    if not cell > 0:
        raise ValueError(f"grid cell={cell} must be > 0 pixels")
    cell = max(cell, math.sqrt(height * width / _MAX_CELLS) * 1.001)
    return GridSpec(cell, max(1, math.ceil(width / cell)), max(1, math.ceil(height / cell)))


def _cell_xy(spec: GridSpec, xy: jax.Array) -> tuple[jax.Array, jax.Array]:
    cx = jnp.clip(jnp.floor(xy[:, 0] / spec.cell), 0, spec.ncx - 1).astype(jnp.int32)
    cy = jnp.clip(jnp.floor(xy[:, 1] / spec.cell), 0, spec.ncy - 1).astype(jnp.int32)
    return cx, cy


@jax.jit
def build(spec: GridSpec, xy: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sorts points by cell.

    Args:
      xy: [M, 2] pixel coordinates (x, y).
      valid: [M] bool; invalid points are put in a sentinel cell no query visits.

    Returns:
      sorted_ids: [M] int32 cell ids, ascending (sentinel ncx * ncy for invalid points).
      order: [M] int32, order[i] = index into xy of the i-th sorted point.
    """
    cx, cy = _cell_xy(spec, xy)
    ids = jnp.where(valid, cy * spec.ncx + cx, spec.ncx * spec.ncy).astype(jnp.int32)
    order = jnp.argsort(ids).astype(jnp.int32)
    return ids[order], order


@jax.jit
def _max_run(spec: GridSpec, sorted_ids: jax.Array) -> jax.Array:
    first = jnp.searchsorted(sorted_ids, sorted_ids, side="left")
    run = jnp.arange(sorted_ids.shape[0]) - first + 1
    return jnp.max(jnp.where(sorted_ids < spec.ncx * spec.ncy, run, 0), initial=0)


def max_occupancy(spec: GridSpec, sorted_ids: jax.Array) -> int:
    """The largest number of valid points in one cell (host int)."""
    if sorted_ids.shape[0] == 0:
        return 0
    return int(_max_run(spec.traced(), sorted_ids))


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): static sizes that rarely recompile."""
    return 1 << max(0, int(n - 1).bit_length())


def ring_offsets(radius: int) -> np.ndarray:
    """[8 * radius (1 for 0), 2] int32 cell offsets (dx, dy) at Chebyshev distance `radius`."""
    r = radius
    return np.array([(dx, dy) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
                     if max(abs(dx), abs(dy)) == r], np.int32).reshape(-1, 2)


BLOCK_3x3 = np.array([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.int32)


def neighbour_indices(spec: GridSpec, sorted_ids: jax.Array, order: jax.Array, q: jax.Array,
                      offsets: jax.Array, occ: int):
    """Indices of the points in the cells at `offsets` from each query's cell.

    Args:
      spec: the grid (traced or Python values).
      q: [Q, 2] query pixel coordinates.
      offsets: [F, 2] int32 cell offsets (dx, dy); F is static, the values may be traced.
      occ: static number of points read per cell.

    Returns:
      idx: [Q, len(offsets) * occ] int32 point indices, -1 where there is none.
      overflow: [Q] bool, some visited cell holds more than `occ` points.
    """
    m = sorted_ids.shape[0]
    cx, cy = _cell_xy(spec, q)
    nx = cx[:, None] + offsets[None, :, 0]  # [Q, F]
    ny = cy[:, None] + offsets[None, :, 1]
    inside = (nx >= 0) & (nx < spec.ncx) & (ny >= 0) & (ny < spec.ncy)
    cid = jnp.where(inside, ny * spec.ncx + nx, -1).astype(jnp.int32)
    start = jnp.searchsorted(sorted_ids, cid.reshape(-1), side="left").reshape(cid.shape)
    end = jnp.searchsorted(sorted_ids, cid.reshape(-1), side="right").reshape(cid.shape)
    start, end = start.astype(jnp.int32), end.astype(jnp.int32)
    overflow = jnp.any(inside & (end - start > occ), axis=1)
    pos = start[:, :, None] + jnp.arange(occ, dtype=jnp.int32)  # [Q, F, occ]
    ok = inside[:, :, None] & (pos < end[:, :, None])
    idx = jnp.where(ok, order[jnp.minimum(pos, max(m - 1, 0))], -1)
    return idx.reshape(q.shape[0], -1), overflow
