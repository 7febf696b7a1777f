"""Small helpers shared by the tests."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P


def enable_x64():
    """Context manager turning on float64 (jax.enable_x64 on new jax, experimental on old)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as _enable  # jax < 0.8

    return _enable(True)


def scene(seed, n, h, w, *, aniso=8.0, min_scale=0.25, extras=True, dtype=jnp.float32):
    """A random scene with every awkward case of the rasterizer's contract.

    Gaussians inside and partly/wholly outside the image, sub-pixel ones, anisotropic rotated
    ones (aspect up to `aniso`), colours outside [0, 1], negative raw scales and opacities
    around 1; with `extras`, also a huge one covering every tile, a singular one (zero
    scale), and 300 small ones piled into one 4x4 area (> 256 Gaussians in one tile).
    """
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1.3, 1.3, (n, 2))
    base = rng.uniform(min_scale, 4.0, (n, 1))
    ratio = rng.uniform(1.0, aniso, (n, 1))
    scales = np.concatenate([base, base * ratio], 1) * rng.choice([-1, 1], (n, 2))
    colors = rng.uniform(-0.3, 1.3, (n, 3))
    rot = rng.normal(0, 2, (n, 1))
    opac = rng.uniform(0.3, 1.2, (n, 1))
    if extras:
        k = 300
        pile = np.stack([rng.uniform(1, 3, k), rng.uniform(1, 3, k)], 1)  # pixels
        means = np.concatenate([means, 2 * pile / [w, h] - 1, [[0.0, 0.0], [0.1, -0.2]]])
        scales = np.concatenate([scales, rng.uniform(0.3, 1.0, (k, 2)),
                                 [[3.0 * max(h, w), 2.0 * max(h, w)], [0.0, 2.0]]])
        colors = np.concatenate([colors, rng.uniform(0, 0.01, (k, 3)), [[0.2, 0.3, 0.4], [1, 1, 1]]])
        rot = np.concatenate([rot, rng.normal(0, 1, (k, 1)), [[0.3], [0.0]]])
        opac = np.concatenate([opac, np.ones((k, 1)), [[0.5], [1.0]]])
    return P.GaussianParams.create(means=means, scales=scales, colors=colors, rotation=rot,
                                   opacity=opac, dtype=dtype)


def smooth_scene(dtype=jnp.float64):
    """Three Gaussians in a smooth region of the render (centres off the pixel grid, every
    alpha < 1 on a 9 x 11 image): where finite differences are meaningful."""
    return P.GaussianParams.create(
        means=[[-0.31, 0.12], [0.27, -0.43], [0.05, 0.33]],
        scales=[[1.7, 2.3], [-2.9, 1.1], [1.3, 1.4]],
        colors=[[0.2, 0.5, 0.1], [0.3, 0.1, 0.4], [0.1, 0.2, 0.2]],
        rotation=[[0.4], [-1.2], [2.0]], opacity=[[0.7], [0.6], [0.5]], dtype=dtype)


def recrc(data: bytes) -> bytes:
    """`data` (a .ssplat file, checksum last) with its CRC-32 recomputed."""
    body = bytes(data[:-4])
    return body + zlib.crc32(body).to_bytes(4, "little")


def header_spans(data: bytes, count: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the first `count` varint fields of a .ssplat header."""
    out, pos = [], 5
    for _ in range(count):
        start = pos
        while data[pos] & 0x80:
            pos += 1
        pos += 1
        out.append((start, pos))
    return out
