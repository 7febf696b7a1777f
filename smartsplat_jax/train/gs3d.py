"""3DGS adapted to images: alpha-blended, depth-ordered Gaussians (Kerbl et al., SIGGRAPH
2023), as the SmartSplat paper evaluates it (its "3DGS" rows; SPEC §9).

The paper takes this baseline from GaussianImage's code base (Zhang et al., ECCV 2024: its
`gaussiansplatting_3d.py`, `train.py` and `utils.py`), which fits 3D Gaussians seen by one
fixed pinhole camera and renders them with gsplat's 3DGS rasterizer. Here:

  * Init (the authors' `Gaussian3D.__init__`): N means uniform in the cube [-1, 1]^3;
    isotropic scales, each the mean distance to its 3 nearest other means (`knn_mean_distance`,
    exact); opacity 0.1; colours from a uniform DC spherical-harmonic coefficient,
    max(C0 * U(0, 1) + 0.5, 0) with C0 = 0.28209 (their degree-3 SH with the higher bands at 0).
  * Camera (theirs): at distance 8 on the z axis, looking along +z, horizontal field of view
    90 degrees (focal f = W / 2 px), principal point at the image centre. A mean (X, Y, Z')
    with Z' = Z + 8 lands at x = W/2 + f X / Z', y = H/2 + f Y / Z' px; its covariance
    projects with the Jacobian of that map (EWA splatting), plus gsplat's 0.3 px^2 low-pass
    on the diagonal. `project_init` does exactly this. So, as in the authors' runs, every
    Gaussian starts in the central seventh of the image (|X / Z'| <= 1/7) and must travel.
  * Compositing: front to back by depth Z' (`render.blend`: alpha = min(0.99, o exp(-sigma)),
    early termination at transmittance 1e-4, over a white background, `render.blend.BACKGROUND`,
    as the authors' `background = ones(3)`: it shows through wherever the transmittance left
    behind every Gaussian is above 0).
  * Training (`config_for_method("3dgs")`): their Fusion2 loss, 0.7 L1 + 0.3 (1 - SSIM) (our
    SmartSplat loss with lambda_l1 = 0.7), their Adan (`train.optim.adan`) at 1e-3, halved
    every 20,000 steps (StepLR), 50,000 steps.

What is trained is the image of the 3D set, not the 3D set: with one fixed camera a 3D
Gaussian's picture depends on its 3D mean and covariance only through the projected mean,
the projected covariance and the depth, so here each Gaussian is a 2D Gaussian
(`GaussianParams` with `blend=True`) with a trained opacity, in a fixed depth order (row 0 in
front). Differences from the authors', each forced by that or by our codec:
  * the depth order is the init's and does not change (in 3DGS it changes when a Gaussian's
    depth does; the order gets no gradient either way);
  * rates are per 2D attribute: means move 1e-3 / 8 normalized units a step (their 1e-3
    world units at depth 8); scales at 1e-3 in log space and opacities at 1e-3 in logit
    space, as theirs (`train.optim.scale_by_group_rates` makes a blended set's steps of those
    relative: |s| and o (1 - o) times the rate); angles and colours (RGB; one view makes
    view-dependent SH a constant per Gaussian) at 1e-3; colours are kept in [0, 16] (theirs
    are max(SH + 0.5, 0), unbounded above; 16 is the codec's `COLOR_BOX`);
  * what the file stores is the 2D set with its opacities and depth ranks (`codec.format`,
    version 3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P

__all__ = ["CAMERA_DISTANCE", "INIT_OPACITY", "SH_C0", "LOW_PASS", "knn_mean_distance",
           "project_init", "gs3d_init"]

CAMERA_DISTANCE = 8.0  # the authors' view matrix: z translated by +8
INIT_OPACITY = 0.1
SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic
LOW_PASS = 0.3  # px^2 added to the projected covariance's diagonal (gsplat)
K = 3


def knn_mean_distance(points: np.ndarray, k: int = K, chunk: int = 4096) -> np.ndarray:
    """[N] the mean Euclidean distance from each of `points` [N, D] to its k nearest other
    points (all others when N <= k; 0 for a single point). Exact.

    Grid method: cells of side h = (volume / N)^(1/D) * 2, each query scans its 3^D
    neighbouring cells, which hold every point within h of it; the few queries whose k-th
    distance exceeds h are finished by brute force. Memory: O(N + chunk * candidates).
    """
    pts = np.asarray(points, np.float64)
    n, d = pts.shape
    if n <= 1:
        return np.zeros(n)
    if n <= k + 1 or n <= 64:
        return _brute(pts, np.arange(n), min(k, n - 1))
    lo = pts.min(0)
    extent = np.maximum(pts.max(0) - lo, 1e-12)
    h = 2.0 * (float(np.prod(extent)) / n) ** (1.0 / d)
    dims = np.maximum(np.floor(extent / h).astype(np.int64) + 1, 1)
    cell = np.minimum(np.floor((pts - lo) / h).astype(np.int64), dims - 1)
    strides = np.cumprod(np.concatenate([[1], dims[::-1][:-1]]))[::-1]
    key = cell @ strides
    order = np.argsort(key, kind="stable")
    skey = key[order]
    offsets = np.stack(np.meshgrid(*([np.arange(-1, 2)] * d), indexing="ij"), -1).reshape(-1, d)
    out = np.empty(n)
    for a in range(0, n, chunk):
        q = np.arange(a, min(a + chunk, n))
        nb = cell[q][:, None, :] + offsets[None]  # [q, 3^D, D]
        inside = np.all((nb >= 0) & (nb < dims), -1)
        nkey = np.where(inside, nb @ strides, -1)
        start = np.searchsorted(skey, nkey, "left")
        stop = np.where(inside, np.searchsorted(skey, nkey, "right"), start)
        occ = int((stop - start).max())
        slot = start[..., None] + np.arange(occ)  # [q, 3^D, occ]
        valid = slot < stop[..., None]
        cand = order[np.minimum(slot, n - 1)].reshape(len(q), -1)
        valid = valid.reshape(len(q), -1) & (cand != q[:, None])
        d2 = np.sum((pts[cand] - pts[q][:, None, :]) ** 2, -1)
        d2 = np.where(valid, d2, np.inf)
        best = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k]) if d2.shape[1] >= k else \
            np.full((len(q), k), np.inf)
        out[q] = best.mean(1)
        far = q[~np.all(best <= h, 1)]  # a closer point may lie beyond the scanned cells
        if far.size:
            out[far] = _brute(pts, far, k)
    return out


def _brute(pts: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(len(queries))
    for a in range(0, len(queries), 1024):
        q = queries[a:a + 1024]
        d2 = np.sum((pts[None] - pts[q][:, None]) ** 2, -1)
        d2[np.arange(len(q)), q] = np.inf
        out[a:a + 1024] = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k]).mean(1)
    return out


def project_init(xyz: np.ndarray, scales: np.ndarray, colors: np.ndarray, opacity: float,
                 height: int, width: int) -> P.GaussianParams:
    """Isotropic 3D Gaussians [N, 3] means (world units), [N] standard deviations, [N, 3]
    colours, seen by the authors' camera (module docstring) -> the 2D `GaussianParams` with
    `blend=True`, rows sorted front to back by depth."""
    xyz = np.asarray(xyz, np.float64)
    s = np.asarray(scales, np.float64)
    f = 0.5 * width  # fov_x = 90 degrees
    z = xyz[:, 2] + CAMERA_DISTANCE
    u, v = xyz[:, 0] / z, xyz[:, 1] / z
    # x = W/2 + f u, y = H/2 + f v px; normalized x = 2 x_px / W - 1 (up to the half-pixel
    # convention of pixel centres, below the grid of any position code).
    means = np.stack([2.0 * f * u / width, 2.0 * f * v / height], -1)
    # J = (f / z) [[1, 0, -u], [0, 1, -v]]; Sigma_2 = s^2 J J^T + LOW_PASS I.
    g = (f * s / z) ** 2
    a = g * (1.0 + u * u) + LOW_PASS
    c = g * (1.0 + v * v) + LOW_PASS
    b = g * u * v
    l11 = np.sqrt(a)
    l21 = b / l11
    l22 = np.sqrt(c - l21 * l21)
    order = np.argsort(z, kind="stable")  # front (smallest depth) first
    chol = P.CholeskyParams(
        means=jnp.asarray(means[order], jnp.float32),
        cholesky=jnp.asarray(np.stack([l11, l21, l22], -1)[order], jnp.float32),
        colors=jnp.asarray(np.asarray(colors)[order], jnp.float32),
        opacity=jnp.full((len(z), 1), opacity, jnp.float32))
    return chol.to_gaussian_params().replace(blend=True)


def gs3d_init(key: jax.Array, image, num_gaussians: int) -> tuple[P.GaussianParams, dict]:
    """The 3DGS baseline's init (module docstring): (params with `blend=True`, info)."""
    from smartsplat_jax.init.smart import check_image, check_num_gaussians

    img = check_image(image)
    h, w = int(img.shape[0]), int(img.shape[1])
    n = check_num_gaussians(num_gaussians, h, w)
    k1, k2 = jax.random.split(key)
    xyz = np.asarray(jax.random.uniform(k1, (n, 3), minval=-1.0, maxval=1.0), np.float64)
    dc = np.asarray(jax.random.uniform(k2, (n, 3)), np.float64)
    colors = np.maximum(SH_C0 * dc + 0.5, 0.0)
    scales = knn_mean_distance(xyz)
    scales = np.where(scales > 0, scales, 1.0)  # a lone Gaussian: any size
    params = project_init(xyz, scales, colors, INIT_OPACITY, h, w)
    return params, {"num_gaussians": n, "camera_distance": CAMERA_DISTANCE,
                    "focal_px": 0.5 * w, "field_of_view_deg": math.degrees(math.pi / 2)}
