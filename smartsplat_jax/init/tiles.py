"""Adaptive tile layout for feature-smart sampling (SPEC §4.1, supplementary Eq. 1-7)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["TILE_SIZE", "TileLayout", "tile_layout", "allocate"]

TILE_SIZE = 1024


class TileLayout(NamedTuple):
    """Tiles of an H x W image, in row-major order (i over rows, j over columns).

    Attributes:
      n_h, n_w: number of tile rows and columns (Eq. 1).
      origins: [n_h * n_w, 2] int64 (p_h, p_w), the top-left pixel of each tile (Eq. 2-5).
      tile_h, tile_w: the tile extent T_h, T_w (Eq. 7), the same for every tile: min(T, H),
        min(T, W).
    """

    n_h: int
    n_w: int
    origins: np.ndarray
    tile_h: int
    tile_w: int

    @property
    def num_tiles(self) -> int:
        return self.n_h * self.n_w


def _axis(size: int, t: int) -> tuple[int, list[int]]:
    n = max(1, math.ceil(size / t))
    if n == 1:
        return 1, [int(math.floor(max(0.0, (size - t) / 2)))]
    stride = (size - t) / (n - 1)
    return n, [int(math.floor(min(i * stride, size - t))) for i in range(n)]


def tile_layout(height: int, width: int, tile: int = TILE_SIZE) -> TileLayout:
    """The adaptive-stride tiling of SPEC §4.1 with integer (floored) origins.

    Tiles may overlap; together they cover the image. With N_h = 1 the tile is centred
    (p_h = max(0, (H - T) / 2)), so when H < T it is the whole height.
    """
    if min(height, width, tile) < 1:
        raise ValueError(f"tile_layout: height={height}, width={width}, tile={tile} must be >= 1")
    n_h, ph = _axis(height, tile)
    n_w, pw = _axis(width, tile)
    origins = np.array([(a, b) for a in ph for b in pw], dtype=np.int64)
    return TileLayout(n_h=n_h, n_w=n_w, origins=origins, tile_h=min(tile, height),
                      tile_w=min(tile, width))


def allocate(total: int, num_tiles: int) -> np.ndarray:
    """Eq. 13: equal shares of `total` samples, the remainder to the first tiles. [num_tiles]."""
    base, rem = divmod(int(total), int(num_tiles))
    return base + (np.arange(num_tiles) < rem).astype(np.int64)
