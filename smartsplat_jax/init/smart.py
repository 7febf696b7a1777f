"""SmartSplat's feature-smart initialization (SPEC §4), and the random baseline (SPEC §10).

smart_init(key, image, N):
  1. tile layout (Eq. 1-7), n_vs = floor(lambda_g N) variational samples split by Eq. 13;
  2. per tile: weights (Eq. 8-10) and weighted sampling without replacement (Eq. 11-14);
  3. variational scales s_base exp(-w/2) (Eq. 15-17), isotropic;
  4. n_us = N - n_vs uniform points at distance >= r_excl = max(s_base, median variational
     scale) from all others (shrunk step by step if it cannot be met; reported);
  5. uniform scales from the 3 nearest points (self included), isotropic;
  6. colours: Gaussian-weighted median under each Gaussian (SPEC §4.6);
  7. raw parameters: normalized means, scales (s, s), rotation 0 (theta = pi), opacity 1.
Exactly N Gaussians come out, deterministically for a given key.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P
from smartsplat_jax.init import colors as C
from smartsplat_jax.init import features, knn, spread, tiles, uniform, variational

__all__ = ["LAMBDA_G", "smart_init", "random_init", "check_image", "check_num_gaussians"]

LAMBDA_G = 0.7


def check_image(image) -> jax.Array:
    """Validates an [H, W, 3] float image in [0, 1] and returns it as a float32 jax array."""
    arr = np.asarray(image) if not isinstance(image, jax.Array) else image
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image has shape {tuple(arr.shape)}; expected (H, W, 3) with H, W >= 1")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"image has dtype {arr.dtype}; expected floats in [0, 1]")
    return jnp.asarray(arr, jnp.float32)


def check_num_gaussians(num_gaussians, height: int, width: int) -> int:
    """Validates N for an H x W image (an integer in [1, H*W]) and returns it as int."""
    if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, (int, np.integer)):
        raise ValueError(f"num_gaussians={num_gaussians!r} must be an integer")
    if not 1 <= num_gaussians <= height * width:
        raise ValueError(f"num_gaussians={num_gaussians} must be in [1, H*W] = [1, {height * width}] "
                         f"for a {height}x{width} image")
    return int(num_gaussians)


def _to_params(xy: np.ndarray, scale: np.ndarray, colors: np.ndarray, height: int,
               width: int) -> P.GaussianParams:
    xy = jnp.asarray(xy, jnp.float32)
    s = jnp.asarray(scale, jnp.float32)
    return P.GaussianParams.create(means=P.pixel_to_normalized(xy, height, width),
                                   scales=jnp.stack([s, s], -1), colors=jnp.asarray(colors))


def smart_init(key: jax.Array, image, num_gaussians: int, *, lambda_g: float = LAMBDA_G,
               lambda_m: float = features.LAMBDA_M, tile: int = tiles.TILE_SIZE,
               k_neighbours: int = knn.K_NEIGHBOURS,
               batch_pixels: int = 1 << 22, devices=None) -> tuple[P.GaussianParams, dict]:
    """Feature-smart initialization of `num_gaussians` Gaussians for an image.

    Args:
      key: PRNG key; the result is a deterministic function of it.
      image: [H, W, 3] float in [0, 1] (numpy or jax).
      num_gaussians: N, in [1, H*W] (see `params.num_gaussians` for the CR budget).
      lambda_g: fraction of variational samples, in [0, 1] (0.7).
      lambda_m: gradient weight in the sampling weights, in [0, 1] (0.9).
      tile: tile side T in pixels (1024).
      k_neighbours: K of the uniform points' scales, self included (3).
      batch_pixels: tiles per batch and device = batch_pixels // T^2 (memory bound).
      devices: None (one device) or a sequence of jax devices (e.g. `jax.devices()[:4]`)
        that share the tiles of the variational sampling, the neighbour queries and the
        colours (`init.spread`): the same Gaussians (positions bit-equal, scales and
        colours to float rounding) in less time.

    Returns:
      params: GaussianParams with exactly N rows: variational points first, then uniform.
      info: dict with counts per stage, s_base, exclusion radius asked/used/shrink, tile
        layout, the number of devices, and seconds per stage.
    """
    img = check_image(image)
    height, width = int(img.shape[0]), int(img.shape[1])
    n = check_num_gaussians(num_gaussians, height, width)
    for name, v in (("lambda_g", lambda_g), ("lambda_m", lambda_m)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}={v} must be in [0, 1]")
    devices = spread.check_devices(devices)
    times = {}
    t0 = time.perf_counter()
    layout = tiles.tile_layout(height, width, tile)
    n_vs = int(np.floor(lambda_g * n))
    n_us = n - n_vs
    counts = tiles.allocate(n_vs, layout.num_tiles)
    base = variational.s_base(height, width, n)
    k_var, k_uni = jax.random.split(key)

    xy_v, w_v = variational.sample_variational(k_var, img, layout, counts, lambda_m=lambda_m,
                                               batch_pixels=batch_pixels, devices=devices)
    times["variational_s"] = time.perf_counter() - t0
    s_v = np.asarray(variational.variational_scales(jnp.asarray(w_v), base))

    t1 = time.perf_counter()
    r_excl = max(base, float(np.median(s_v))) if n_vs else base
    xy_u, excl = uniform.sample_uniform_excluding(k_uni, xy_v, n_us, height, width, r_excl)
    times["uniform_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    xy = np.concatenate([xy_v, xy_u]).astype(np.float32)
    s_u = knn.knn_scales(xy, np.arange(n_vs, n), height, width, k=k_neighbours,
                         devices=devices)
    s_u = np.where(s_u > 0, s_u, base).astype(np.float32)  # a lone point: fall back to s_base
    scale = np.concatenate([s_v, s_u]).astype(np.float32)
    times["knn_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    cols = C.weighted_median_colors(img, xy, scale, devices=devices)
    times["colors_s"] = time.perf_counter() - t3
    params = _to_params(xy, scale, cols, height, width)
    jax.block_until_ready(params)
    times["total_s"] = time.perf_counter() - t0

    info = {
        "num_gaussians": n, "num_variational": n_vs, "num_uniform": n_us,
        "s_base": base, "exclusion": excl, "devices": spread.count(devices),
        "tiles": {"size": tile, "n_h": layout.n_h, "n_w": layout.n_w, "tile_h": layout.tile_h,
                  "tile_w": layout.tile_w, "origins": layout.origins.tolist(),
                  "counts": counts.tolist()},
        "seconds": times,
    }
    return params, info


def random_init(key: jax.Array, image, num_gaussians: int) -> tuple[P.GaussianParams, dict]:
    """The paper's ablation baseline: uniform means, isotropic s_base scales, rotation raw 0,
    colours read (bilinearly) from the image at the means."""
    img = check_image(image)
    height, width = int(img.shape[0]), int(img.shape[1])
    n = check_num_gaussians(num_gaussians, height, width)
    base = variational.s_base(height, width, n)
    xy = jax.random.uniform(key, (n, 2)) * jnp.asarray([width, height], jnp.float32)
    cols = C.bilinear(img, xy)
    params = _to_params(np.asarray(xy), np.full(n, base, np.float32), np.asarray(cols), height,
                        width)
    return params, {"num_gaussians": n, "s_base": base}
