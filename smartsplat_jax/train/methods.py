"""Initializations of the methods compared (SPEC §4, §10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P
from smartsplat_jax.init import random_init, smart_init
from smartsplat_jax.init.smart import check_image, check_num_gaussians
from smartsplat_jax.train.config import METHODS

__all__ = ["initialize", "train_method", "gaussianimage_init", "gaussianimage_cholesky_init"]


def gaussianimage_init(key: jax.Array, image, num_gaussians: int) -> tuple[P.GaussianParams, dict]:
    """GaussianImage (RS) as the authors ran it: means U(-1, 1); raw scales U(0, 1) with the
    activation |raw + 0.5| px (stored here as raw + 0.5 under our |.|, the same function and
    gradients); raw rotation U(0, 1); colours U(0, 1); opacity 1."""
    img = check_image(image)
    n = check_num_gaussians(num_gaussians, int(img.shape[0]), int(img.shape[1]))
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = P.GaussianParams.create(
        means=jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0),
        scales=jax.random.uniform(k2, (n, 2)) + 0.5,
        rotation=jax.random.uniform(k3, (n, 1)),
        colors=jax.random.uniform(k4, (n, 3)))
    return params, {"num_gaussians": n}


def gaussianimage_cholesky_init(key: jax.Array, image, num_gaussians: int
                                ) -> tuple[P.CholeskyParams, dict]:
    """GaussianImage (Cholesky) as the authors ran it (`gaussianimage_cholesky.py`): means
    U(-1, 1) (the authors draw them through tanh(atanh(.)), the same distribution); the
    Cholesky factor (l11, l21, l22) = U(0, 1)^3 + (0.5, 0, 0.5) px, their `cholesky_bound`
    folded into the raw values (the same function and gradients); colours U(0, 1); opacity 1.
    Returns `CholeskyParams`."""
    img = check_image(image)
    n = check_num_gaussians(num_gaussians, int(img.shape[0]), int(img.shape[1]))
    k1, k2, k3 = jax.random.split(key, 3)
    params = P.CholeskyParams(
        means=jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0),
        cholesky=jax.random.uniform(k2, (n, 3)) + jnp.asarray([0.5, 0.0, 0.5]),
        colors=jax.random.uniform(k3, (n, 3)), opacity=jnp.ones((n, 1)))
    return params, {"num_gaussians": n}


def initialize(method: str, key: jax.Array, image, num_gaussians: int, *, devices=None):
    """(params, info) for `method` in METHODS: `GaussianParams`, or `CholeskyParams` for
    gaussianimage-cholesky and lig (`train_method` trains either; convert with
    `to_gaussian_params` to encode). lig: both levels, level 0 first (`train.lig.lig_init`);
    imagegs: N rows, half of them active (`train.imagegs.imagegs_init`); 3dgs: `blend=True`,
    rows front to back (`train.gs3d.gs3d_init`).

    `devices`: None, or jax devices that share SmartSplat's initialization (`smart_init`;
    the same Gaussians up to float rounding). The other methods' initializations are O(N)
    draws and run on one device whatever it says."""
    if method == "smartsplat":
        return smart_init(key, image, num_gaussians, devices=devices)
    if method == "random":
        return random_init(key, image, num_gaussians)
    if method == "gaussianimage-rs":
        return gaussianimage_init(key, image, num_gaussians)
    if method == "gaussianimage-cholesky":
        return gaussianimage_cholesky_init(key, image, num_gaussians)
    if method == "lig":
        from smartsplat_jax.train.lig import lig_init

        return lig_init(key, image, num_gaussians)
    if method == "imagegs":
        from smartsplat_jax.train.imagegs import imagegs_init

        return imagegs_init(key, image, num_gaussians)
    if method == "3dgs":
        from smartsplat_jax.train.gs3d import gs3d_init

        return gs3d_init(key, image, num_gaussians)
    raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")


def train_method(method: str, image, params, config, *, key: jax.Array | None = None,
                 **fit_kwargs):
    """Trains `initialize(method, ...)`'s params: `train.fit`, or for lig its two levels
    (`train.lig.fit_lig`), for imagegs its stages of progressive addition
    (`train.imagegs.fit_imagegs`, which samples with `key`). Same keywords and returns as
    `train.fit`."""
    if method == "lig":
        from smartsplat_jax.train.lig import fit_lig

        return fit_lig(image, params, config, **fit_kwargs)
    if method == "imagegs":
        from smartsplat_jax.train.imagegs import fit_imagegs

        return fit_imagegs(image, params, config, key=key, **fit_kwargs)
    from smartsplat_jax.train.loop import fit

    return fit(image, params, config, **fit_kwargs)
