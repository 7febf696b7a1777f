"""ImageGS*: GaussianImage (RS) with Image-GS's content-adaptive init and progressive addition.

The SmartSplat paper compares against "ImageGS*": Image-GS's core strategies (Zhang et al.,
SIGGRAPH 2025, arXiv 2407.01866) re-implemented on top of GaussianImage, without Image-GS's
top-K rasterization. Here, with Image-GS's defaults (its `cfgs/default.yaml` and
`model.py`):

  * Model and training: GaussianImage-RS's (`config_for_method("imagegs")` is
    gaussianimage-rs's: L2 loss, GaussianImage's Adan at 1e-3, halved every 20,000 steps).
  * Content-adaptive init: half of the N Gaussians (initial_ratio 0.5) start at pixel
    centres drawn without replacement, 30 % uniformly (init_random_ratio 0.3) and 70 % with
    probability proportional to the squared gradient magnitude of the image's luma;
    isotropic, 5 px (init_scale), angle 0 (raw rotation 0 here), colour the image's at that
    pixel.
  * Progressive addition: 4 times (add_times), every `add_steps` steps (500, or steps / 8
    when the run is shorter than 4,000 steps, so that the full set trains at least half of
    the run), an eighth of N more Gaussians are added at pixels drawn without replacement
    with probability proportional to the squared channel-mean |error| of the current render
    against the target (the target blurred by a Gaussian kernel of size
    round(sqrt(H W) / 400), at least 3 and odd, when that is >= 1), isotropic 5 px, colour
    the error at that pixel. The optimizer starts afresh after each addition, as Image-GS
    rebuilds its Adam.

Static shapes: the N rows exist from the start; a Gaussian not yet added has opacity 0, so
every renderer culls it and its gradients are zero (Adam and Adan then leave it where it is);
adding it sets its opacity to 1. Each stage is one `train.fit` of the same shapes and
configuration (one compiled step for all stages); the quantization-aware phase, when a
quantizer is given, is the last stage's. The learning-rate schedule restarts with each stage
(GaussianImage halves its rates every 20,000 steps: only runs longer than that see it
shifted, by at most 4 x add_steps).

Memory: the sampling maps are per pixel on the host (float64, a few times 8 H W bytes) and the
draws without replacement a Gumbel top-k over H W on the device, as Image-GS's own sampling.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P

__all__ = ["INITIAL_RATIO", "ADD_TIMES", "ADD_STEPS", "INIT_SCALE", "INIT_RANDOM_RATIO",
           "add_steps", "stage_sizes", "gradient_probability", "error_probability",
           "imagegs_init", "add_gaussians", "fit_imagegs"]

INITIAL_RATIO = 0.5
ADD_TIMES = 4
ADD_STEPS = 500
INIT_SCALE = 5.0  # px
INIT_RANDOM_RATIO = 0.3
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)


def stage_sizes(num_gaussians: int) -> list[int]:
    """Active Gaussians in each of the 1 + ADD_TIMES stages: ceil(0.5 N), then + ceil(N / 8)
    at a time, capped at N."""
    n0 = math.ceil(INITIAL_RATIO * num_gaussians)
    add = math.ceil((num_gaussians - n0) / ADD_TIMES)
    return [min(num_gaussians, n0 + k * add) for k in range(ADD_TIMES + 1)]


def add_steps(steps: int) -> int:
    """Steps between additions for a run of `steps`: ADD_STEPS, or steps // (2 ADD_TIMES)
    when that is smaller (at least 1)."""
    return max(1, min(ADD_STEPS, steps // (2 * ADD_TIMES)))


def gradient_probability(image) -> np.ndarray:
    """[H W] sampling probabilities: the squared gradient magnitude of the luma (central
    differences, `np.gradient`), normalized to sum 1 (uniform for a flat image)."""
    img = np.asarray(image, np.float32)
    luma = img @ _LUMA if img.shape[-1] == 3 else img[..., 0]
    gy, gx = np.gradient(luma.astype(np.float64))
    g = (gx * gx + gy * gy).ravel()
    return _normalized(g)


def _normalized(w: np.ndarray) -> np.ndarray:
    total = float(np.sum(w))
    if not np.isfinite(total) or total <= 0:
        return np.full(w.shape, 1.0 / w.size)
    return w / total


def _blur_size(height: int, width: int) -> int:
    k = round(math.sqrt(height * width) // 400)
    if k < 1:
        return 0
    k = max(3, k)
    return k + 1 if k % 2 == 0 else k


def _gaussian_blur(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's `gaussian_blur` with its default sigma for `size`:
    0.3 ((size - 1) 0.5 - 1) + 0.8, reflect padding."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    r = size // 2
    out = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    out = sum(k[i] * out[i:i + image.shape[0]] for i in range(size))
    return sum(k[i] * out[:, i:i + image.shape[1]] for i in range(size))


def error_probability(rendered, target) -> tuple[np.ndarray, np.ndarray]:
    """([H W] probabilities, [H, W, 3] error): the error is the target (blurred as the module
    docstring says) minus the clamped render; the probabilities its squared channel-mean
    magnitude, normalized to sum 1."""
    t = np.asarray(target, np.float32)
    size = _blur_size(t.shape[0], t.shape[1])
    if size:
        t = _gaussian_blur(t, size).astype(np.float32)
    err = t - np.clip(np.asarray(rendered, np.float32), 0.0, 1.0)
    w = np.square(np.mean(np.abs(err), -1)).ravel().astype(np.float64)
    return _normalized(w), err


def _pixels(key: jax.Array, prob: np.ndarray, count: int, exclude=None) -> np.ndarray:
    """`count` distinct pixel indices drawn without replacement with probabilities `prob`
    (over H W pixels), none in `exclude`."""
    p = np.asarray(prob, np.float64)
    if exclude is not None and len(exclude):
        p = p.copy()
        p[exclude] = 0.0
    count = min(count, int(np.count_nonzero(p)) or 0)
    if count == 0:
        return np.zeros(0, np.int64)
    p = jnp.asarray(p / p.sum(), jnp.float32)
    return np.asarray(jax.random.choice(key, p.shape[0], (count,), replace=False, p=p))


def _rows_at(pixels: np.ndarray, colors, height: int, width: int, num: int,
             dtype=jnp.float32) -> dict:
    """Fields for Gaussians centred on `pixels` (flat indices), isotropic INIT_SCALE px,
    raw rotation 0, the given colours, opacity 1."""
    y, x = np.divmod(pixels, width)
    xy = np.stack([x, y], -1).astype(np.float32)
    return {"means": P.pixel_to_normalized(jnp.asarray(xy, dtype), height, width),
            "scales": jnp.full((num, 2), INIT_SCALE, dtype),
            "rotation": jnp.zeros((num, 1), dtype),
            "colors": jnp.asarray(colors, dtype), "opacity": jnp.ones((num, 1), dtype)}


def imagegs_init(key: jax.Array, image, num_gaussians: int) -> tuple[P.GaussianParams, dict]:
    """N rows: the first ceil(N / 2) content-adaptive (module docstring), the rest not yet
    added (opacity 0, colour 0, at the centre). info: {"num_gaussians", "stages"}."""
    from smartsplat_jax.init.smart import check_image, check_num_gaussians

    img = np.asarray(check_image(image), np.float32)
    h, w = img.shape[:2]
    n = check_num_gaussians(num_gaussians, h, w)
    n0 = stage_sizes(n)[0]
    n_random = round(INIT_RANDOM_RATIO * n0)
    k1, k2 = jax.random.split(key)
    uniform = _pixels(k1, np.full(h * w, 1.0 / (h * w)), n_random)
    adaptive = _pixels(k2, gradient_probability(img), n0 - len(uniform))
    picked = np.concatenate([uniform, adaptive])
    if len(picked) < n0:  # a flat image: top up with uniform pixels not taken yet
        picked = np.concatenate([picked, _pixels(k2, np.full(h * w, 1.0), n0 - len(picked),
                                                 exclude=picked)])
    first = _rows_at(picked, img.reshape(-1, 3)[picked], h, w, len(picked))
    rest = n - len(picked)
    params = P.GaussianParams(**{
        k: jnp.concatenate([v, jnp.zeros((rest,) + v.shape[1:], v.dtype)], 0)
        for k, v in first.items()})
    params = params.replace(scales=params.scales.at[len(picked):].set(INIT_SCALE))
    return params, {"num_gaussians": n, "stages": stage_sizes(n)}


def add_gaussians(key: jax.Array, params: P.GaussianParams, image, active: int, count: int,
                  *, backend: str = "xla") -> P.GaussianParams:
    """Rows [active, active + count) added at error-sampled pixels (module docstring)."""
    from smartsplat_jax.render import render

    img = np.asarray(image, np.float32)
    h, w = img.shape[:2]
    count = min(count, params.num - active)
    if count <= 0:
        return params
    prob, err = error_probability(render(params, h, w, backend=backend), img)
    pixels = _pixels(key, prob, count)
    if len(pixels) < count:  # a perfect render: top up uniformly
        pixels = np.concatenate([pixels, _pixels(key, np.full(h * w, 1.0), count - len(pixels),
                                                 exclude=pixels)])
    new = _rows_at(pixels, err.reshape(-1, 3)[pixels], h, w, count, params.means.dtype)
    return params.replace(**{k: getattr(params, k).at[active:active + count].set(v)
                             for k, v in new.items()})


def fit_imagegs(image, params: P.GaussianParams, config, *, key: jax.Array | None = None,
                workdir=None, quantizer=None, **fit_kwargs):
    """Trains `imagegs_init`'s params with progressive addition (module docstring).

    Args:
      image: [H, W, 3] float target in [0, 1].
      params: `imagegs_init`'s N rows.
      config: the `FitConfig` of the whole run (`config_for_method("imagegs")`); `steps` in
        all, the stages taking add_steps(steps) each and the last stage the rest.
      key: PRNG key of the additions' sampling (None: PRNGKey(0)).
      workdir: stage k checkpoints to workdir/stage<k> (`train.fit`).
      quantizer: used by the last stage (its last steps quantization-aware).
      fit_kwargs: `train.fit`'s other keywords (progress, resume, run_info, ...).

    Raises:
      ValueError: steps < 2 ADD_TIMES; as `train.fit`.

    Returns:
      (params, history): the N Gaussians, and the last stage's history with "stages" (each
      stage's steps, active Gaussians and final training PSNR), train_seconds and
      compile_seconds added up over the stages.
    """
    from pathlib import Path

    from smartsplat_jax.render import resolve_backend
    from smartsplat_jax.train.loop import fit

    if config.steps < 2 * ADD_TIMES:
        raise ValueError(f"steps={config.steps} must be at least {2 * ADD_TIMES} for imagegs "
                         f"(the Gaussians are added in {ADD_TIMES} steps)")
    key = jax.random.PRNGKey(0) if key is None else key
    backend = resolve_backend(config.backend, forward_only=True)
    img = np.asarray(image, np.float32)
    sizes = stage_sizes(params.num)
    every = add_steps(config.steps)
    run_info = fit_kwargs.pop("run_info", None) or {}
    stages, totals = [], {"train_seconds": 0.0, "compile_seconds": 0.0}
    history = None
    for k, active in enumerate(sizes):
        last = k == len(sizes) - 1
        if k:
            params = add_gaussians(jax.random.fold_in(key, k), params, img, sizes[k - 1],
                                   active - sizes[k - 1], backend=backend)
        steps = config.steps - every * (len(sizes) - 1) if last else every
        stage_config = dataclasses.replace(config, steps=steps)
        params, history = fit(img, params, stage_config,
                              workdir=None if workdir is None else Path(workdir) / f"stage{k}",
                              quantizer=quantizer if last else None,
                              run_info={**run_info, "imagegs_stage": k}, **fit_kwargs)
        for t in totals:
            totals[t] += history.get(t, 0.0) or 0.0
        stages.append({"stage": k, "steps": steps, "active": active,
                       "train_psnr": history["train_psnr"][-1] if history["train_psnr"]
                       else None})
    history = {**history, **totals, "stages": stages}
    return params, history
