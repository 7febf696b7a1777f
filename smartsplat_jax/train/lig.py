"""LIG: two levels of GaussianImage (Cholesky) Gaussians, a coarse one and a residual one.

"Large Images are Gaussians" (Zhu et al., AAAI 2025; the authors' `gaussianlig.py`,
`train.py`, defaults n_scales = 2, allo_ratio = 0.5, Adam at lr 0.018, L2 loss) fits

  level 0: N0 = floor(N / 4 * 0.5) Gaussians to the image area-downsampled by 2
           (floor(H / 2) x floor(W / 2)), for `steps` steps;
  level 1: N1 = N - N0 Gaussians at full resolution to what level 0 leaves, for `steps`
           steps, level 0 frozen.

Each level is GaussianImage's Cholesky model (`train.methods.gaussianimage_cholesky_init`),
trained by `train.fit` with the configuration of `config_for_method("lig")`: L2 loss, Adam,
every rate 0.018. The authors keep positions in pixels, so their rate moves a Gaussian about
0.018 px a step; `config.lr_means` is read in those units here and converted to normalized
units at each level's size (2 lr / max(h, w)). Adam's eps is this project's 1e-15 (torch's
default, which the authors leave, is 1e-8: below the square roots of the second moments
either way). Their StepLR (x0.7 every 70,000 steps) never acts within their default
30,000 steps, so the rates are constant.

Adapted to one file of additive Gaussians (what `.ssplat` stores and every renderer draws):
the authors render level 0 at its own size, upsample that image bilinearly, and fit level 1 to
the residual mapped into [0, 1] (+0.5, then min-max), because their rasterizer clamps each
level's output. Here level 0's Gaussians are moved to full resolution instead (the same
Gaussian field sampled on the finer grid: positions map pixel centres, x' = f x + (f - 1) / 2,
Cholesky factors scale by f), and level 1 trains on the render of both levels together with
level 0's rows frozen (`freeze_rows`): it fits the same residual, and the sum is exactly what
the file decodes. The two levels are one `CholeskyParams` of N rows, level 0 first.

The run takes 2 x `steps` optimizer steps; level 0's cost a quarter of a full-resolution step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smartsplat_jax import params as P

__all__ = ["LEVEL0_SHARE", "level_sizes", "coarse_size", "area_downsample", "to_full_resolution",
           "freeze_rows", "lig_init", "fit_lig"]

LEVEL0_SHARE = 0.5  # the authors' allo_ratio: level 0 gets this share of N / 4


def level_sizes(num_gaussians: int) -> tuple[int, int]:
    """(N0, N1): the Gaussians of level 0 and of level 1 for N in all (authors' rule)."""
    n0 = int(num_gaussians * 0.25 * LEVEL0_SHARE)
    return n0, num_gaussians - n0


def coarse_size(height: int, width: int) -> tuple[int, int]:
    """Level 0's image size: (floor(H / 2), floor(W / 2)), at least 1 x 1."""
    return max(1, height // 2), max(1, width // 2)


def area_downsample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> [height, width, C]: each output pixel the mean of the input pixels its
    area covers, rows [floor(i H / h), ceil((i + 1) H / h)) (adaptive average pooling, what
    torch's `interpolate(mode="area")` computes)."""
    img = np.asarray(image, np.float64)
    H, W = img.shape[:2]

    def pool(a, n_in, n_out, axis):
        c = np.concatenate([np.zeros_like(np.take(a, [0], axis=axis)), np.cumsum(a, axis=axis)],
                           axis=axis)
        i = np.arange(n_out)
        lo = (i * n_in) // n_out
        hi = -((-(i + 1) * n_in) // n_out)
        return (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo).reshape(
            [-1 if d == axis else 1 for d in range(a.ndim)])

    return pool(pool(img, H, height, 0), W, width, 1).astype(np.float32)


def to_full_resolution(params: P.CholeskyParams, src_hw: tuple[int, int],
                       dst_hw: tuple[int, int]) -> P.CholeskyParams:
    """Level 0's Gaussians fitted at src_hw = (h, w) moved to dst_hw = (H, W): the same field,
    pixel centres mapped by x' = f x + (f - 1) / 2 with f = W / w (and H / h for y), the
    Cholesky factor L' = diag(fx, fy) L; colours unchanged (an unnormalized Gaussian's peak
    does not depend on its size)."""
    (h, w), (H, W) = src_hw, dst_hw
    fx, fy = W / w, H / h
    px = P.normalized_to_pixel(params.means, h, w)
    f = jnp.asarray([fx, fy], params.means.dtype)
    means = P.pixel_to_normalized(px * f + (f - 1.0) / 2.0, H, W)
    chol = params.cholesky * jnp.asarray([fx, fy, fy], params.cholesky.dtype)
    return params.replace(means=means, cholesky=chol)


def freeze_rows(num: int) -> optax.GradientTransformation:
    """An optax transform that zeroes the updates of the first `num` rows of every leaf."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u: u.at[:num].set(0.0), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _at_size(config, height: int, width: int):
    """`config` with lr_means (px per step, the authors' unit) in normalized units at this
    size."""
    return dataclasses.replace(config, lr_means=2.0 * config.lr_means / max(height, width))


def lig_init(key: jax.Array, image, num_gaussians: int) -> tuple[P.CholeskyParams, dict]:
    """Both levels' initial Gaussians, level 0 first (its N0 rows at level 0's size, drawn
    with GaussianImage-Cholesky's init, the key split in two), and {"num_gaussians",
    "levels": [N0, N1], "coarse_size": [h, w]}."""
    from smartsplat_jax.init.smart import check_image, check_num_gaussians
    from smartsplat_jax.train.methods import gaussianimage_cholesky_init

    img = check_image(image)
    H, W = int(img.shape[0]), int(img.shape[1])
    n = check_num_gaussians(num_gaussians, H, W)
    n0, n1 = level_sizes(n)
    h, w = coarse_size(H, W)
    k0, k1 = jax.random.split(key)
    parts = []
    if n0:
        parts.append(gaussianimage_cholesky_init(k0, np.zeros((h, w, 3), np.float32), n0)[0])
    parts.append(gaussianimage_cholesky_init(k1, img, n1)[0])
    params = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, 0), *parts)
    return params, {"num_gaussians": n, "levels": [n0, n1], "coarse_size": [h, w]}


def fit_lig(image, params: P.CholeskyParams, config, *, workdir=None, **fit_kwargs):
    """Trains LIG's two levels (module docstring) from `lig_init`'s params.

    Args:
      image: [H, W, 3] float target in [0, 1].
      params: `lig_init`'s N rows (level 0 first).
      config: the `FitConfig` of each level (`config_for_method("lig")`).
      workdir: level 0 checkpoints to workdir/level0, level 1 to workdir (`train.fit`).
      fit_kwargs: the rest of `train.fit`'s keywords (progress, resume, run_info, ...), not
        quantizer (LIG trains in float; the file is quantized after) nor optimizer.

    Returns:
      (params, history): both levels as one `CholeskyParams` at full resolution (level 0
      first), and level 1's history with "levels": [level 0's summary] and the two levels'
      train_seconds and compile_seconds added up.

    Raises:
      As `train.fit`; TrainingDiverged from level 0 carries level 0's rows only.
    """
    from pathlib import Path

    from smartsplat_jax.train.loop import fit
    from smartsplat_jax.train.optim import make_optimizer

    for bad in ("quantizer", "optimizer"):
        if fit_kwargs.get(bad) is not None:
            raise ValueError(f"{bad}={fit_kwargs[bad]!r}: LIG trains with its own optimizer and "
                             "in float (the file is quantized after training)")
        fit_kwargs.pop(bad, None)
    img = np.asarray(image, np.float32)
    H, W = int(img.shape[0]), int(img.shape[1])
    n0, _ = level_sizes(params.num)
    h, w = coarse_size(H, W)
    level0 = jax.tree_util.tree_map(lambda a: a[:n0], params)
    history0 = None
    if n0:
        run_info = {**(fit_kwargs.pop("run_info", None) or {})}
        level0, history0 = fit(area_downsample(img, h, w), level0, _at_size(config, h, w),
                               workdir=None if workdir is None else Path(workdir) / "level0",
                               run_info={**run_info, "lig_level": 0}, **fit_kwargs)
        fit_kwargs["run_info"] = {**run_info, "lig_level": 1}
        level0 = to_full_resolution(level0, (h, w), (H, W))
    both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], 0), level0,
                                  jax.tree_util.tree_map(lambda a: a[n0:], params))
    config = _at_size(config, H, W)
    optimizer = optax.chain(make_optimizer(config), freeze_rows(n0))
    out, history = fit(img, both, config, workdir=workdir, optimizer=optimizer, **fit_kwargs)
    if history0 is not None:
        history = dict(history)
        history["levels"] = [{"level": 0, "num_gaussians": n0, "size": [h, w],
                              "steps": config.steps,
                              "train_psnr": history0["train_psnr"][-1] if history0["train_psnr"]
                              else None,
                              "train_seconds": history0["train_seconds"]}]
        for k in ("train_seconds", "compile_seconds"):
            history[k] = history.get(k, 0.0) + history0.get(k, 0.0)
    return out, history
