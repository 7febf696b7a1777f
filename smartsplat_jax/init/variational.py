"""Gradient-colour guided variational sampling, tile by tile (SPEC §4.3-4.4, Eq. 11-17).

In each tile (i, j), n_ij distinct pixels are drawn without replacement with probability
proportional to the tile's weights w (Eq. 11-12) by the Gumbel-top-k trick
(`jax.random.categorical(..., replace=False)`); their tile coordinates become global integer
pixel coordinates (Eq. 14), and their scales s_base * exp(-w/2) (Eq. 15-17).

Tiles are processed in batches of equal-sized tiles (every tile of a layout has the same
extent), so the memory is that of `batch` tiles whatever the image size. Each tile gets its
own key, split from the caller's, so results do not depend on the batch size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax.init import features, spread
from smartsplat_jax.init.tiles import TileLayout

__all__ = ["s_base", "variational_scales", "draw_without_replacement", "sample_variational",
           "weight_map"]


def s_base(height: int, width: int, num_gaussians: int) -> float:
    """Eq. 17: one third of the equal-area radius sqrt(HW / (pi N)), in pixels."""
    return math.sqrt(height * width / (math.pi * num_gaussians)) / 3.0


def variational_scales(w: jax.Array, base: float) -> jax.Array:
    """Eq. 15: s = s_base * exp(-w / 2) for weights w in [0, 1]; pixels."""
    return base * jnp.exp(-0.5 * w)


def draw_without_replacement(key: jax.Array, w: jax.Array, k: int) -> jax.Array:
    """k distinct indices into the flat weights w [P] (> 0), drawn with P(i) proportional to
    w_i without replacement (Eq. 11-12, Gumbel-top-k), in draw order. [k] int32."""
    return jax.random.categorical(key, jnp.log(w), shape=(k,), replace=False).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("tile_h", "tile_w", "k", "lambda_m", "sequential"))
def _sample_batch(keys, origins, image, tile_h: int, tile_w: int, k: int, lambda_m: float,
                  sequential: bool = False):
    """k weighted draws without replacement in each of a batch of tiles.

    `sequential`: the tiles one after another (`lax.map`) instead of vectorized (`vmap`):
    the same formulas per tile with one tile's intermediates alive at a time. XLA fuses the
    two programs differently, so a weight may differ in its last bit (measured: the same
    pixels drawn, weights within 2.4e-7; at 2048 x 1365 every Gaussian bit-equal). On a
    2-core CPU at 2048 x 1365, CR 50 (four 1024 x 1024 tiles) the sampling took 0.41 s
    against 0.59 s vectorized, and the initialization's peak memory fell from 0.99 to
    0.63 GiB. A batch split over several devices stays vectorized, so that jax partitions it
    row-wise (`init.spread`).

    Args:
      keys: [B] PRNG keys, one per tile.
      origins: [B, 2] int32 (p_h, p_w).
      image: [H, W, 3] float32.

    Returns:
      xy: [B, k, 2] int32 global pixel coordinates (x = column, y = row), in draw order.
      w: [B, k] float32 weight at each drawn pixel.
    """

    def one(key, origin):
        tile = jax.lax.dynamic_slice(image, (origin[0], origin[1], jnp.zeros_like(origin[0])),
                                     (tile_h, tile_w, 3))
        wmap = features.weights(tile, lambda_m).reshape(-1)
        idx = draw_without_replacement(key, wmap, k)
        ys, xs = jnp.divmod(idx, tile_w)
        xy = jnp.stack([xs + origin[1], ys + origin[0]], -1).astype(jnp.int32)
        return xy, wmap[idx]

    if sequential:
        return jax.lax.map(lambda a: one(*a), (keys, origins))
    return jax.vmap(one)(keys, origins)


def _batch_size(layout: TileLayout, batch_pixels: int, devices=None) -> int:
    """Tiles per batch: at most batch_pixels // tile area per device, a multiple of the
    device count."""
    d = spread.count(devices)
    area = layout.tile_h * layout.tile_w
    return max(1, min(-(-layout.num_tiles // d), batch_pixels // area)) * d


def sample_variational(key: jax.Array, image: jax.Array, layout: TileLayout,
                       counts: np.ndarray, *, lambda_m: float = features.LAMBDA_M,
                       batch_pixels: int = 1 << 22,
                       devices=None) -> tuple[np.ndarray, np.ndarray]:
    """Draws counts[t] distinct weighted pixels in each tile t of `layout`.

    Args:
      key: PRNG key.
      image: [H, W, 3] float32 in [0, 1].
      layout: the tile layout.
      counts: [num_tiles] samples per tile (Eq. 13), each <= tile_h * tile_w.
      lambda_m: gradient weight in Eq. 10.
      batch_pixels: tiles per batch and device = batch_pixels // tile area (memory bound).
      devices: None (one device) or several jax devices that share each batch of tiles
        (`init.spread`; the same samples).

    Returns:
      xy: [sum(counts), 2] float32 pixel coordinates (integers), tiles in row-major order.
      w: [sum(counts)] float32 weights at those pixels.
    """
    counts = np.asarray(counts, np.int64)
    area = layout.tile_h * layout.tile_w
    if counts.max(initial=0) > area:
        raise ValueError(f"sample_variational: {counts.max()} samples asked in a tile of "
                         f"{area} pixels; at most {area}")
    k = int(counts.max(initial=0))
    if k == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
    devices = spread.check_devices(devices)
    keys = jax.random.split(key, layout.num_tiles)
    b = _batch_size(layout, batch_pixels, devices)
    # Vectorized tiles on an accelerator or over devices (measured: sequential on one CPU).
    sequential = devices is None and jax.default_backend() == "cpu"
    image = spread.replicate(image, devices)
    xy_parts, w_parts = [], []
    for t0 in range(0, layout.num_tiles, b):
        sel = np.arange(t0, t0 + b) % layout.num_tiles  # pad the last batch by wrapping
        xy, w = _sample_batch(spread.put_batch(keys[sel], devices),
                              spread.put_batch(layout.origins[sel].astype(np.int32), devices),
                              image, tile_h=layout.tile_h, tile_w=layout.tile_w, k=k,
                              lambda_m=float(lambda_m), sequential=sequential)
        xy, w = np.asarray(xy), np.asarray(w)
        for row, t in enumerate(sel[: min(b, layout.num_tiles - t0)]):
            xy_parts.append(xy[row, : counts[t]])
            w_parts.append(w[row, : counts[t]])
    return (np.concatenate(xy_parts).astype(np.float32), np.concatenate(w_parts).astype(np.float32))


@functools.partial(jax.jit, static_argnames=("tile_h", "tile_w", "lambda_m"))
def _weights_batch(origins, image, tile_h: int, tile_w: int, lambda_m: float):
    one = lambda o: features.weights(
        jax.lax.dynamic_slice(image, (o[0], o[1], o[0] * 0), (tile_h, tile_w, 3)), lambda_m)
    return jax.vmap(one)(origins)


def weight_map(image: jax.Array, layout: TileLayout, *, lambda_m: float = features.LAMBDA_M,
               batch_pixels: int = 1 << 22) -> np.ndarray:
    """[H, W] float32 weights of every pixel, for visualization (later tiles overwrite overlaps)."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), np.float32)
    b = _batch_size(layout, batch_pixels)
    for t0 in range(0, layout.num_tiles, b):
        sel = np.arange(t0, min(t0 + b, layout.num_tiles))
        maps = np.asarray(_weights_batch(jnp.asarray(layout.origins[sel], jnp.int32), image,
                                         tile_h=layout.tile_h, tile_w=layout.tile_w,
                                         lambda_m=float(lambda_m)))
        for m, t in zip(maps, sel):
            ph, pw = layout.origins[t]
            out[ph : ph + layout.tile_h, pw : pw + layout.tile_w] = m
    return out
