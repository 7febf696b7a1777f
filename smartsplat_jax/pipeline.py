"""Fit one image end to end and write every output: the work behind `experiments.fit`.

run_fit(image_path, workdir, cr=..., method=..., steps=...) loads the image, initializes N
Gaussians with the method's initialization, trains them, and writes to `workdir`:
  recon.png        the reconstruction (float render at full resolution, 8-bit PNG)
  params.npz       the trained raw parameters (+ height, width)
  metrics.json     psnr, ssim, ms_ssim, num_gaussians, steps, train_seconds, height, width,
                   cr, method, backend, device, jax_version, and more (see `run_fit`)
  curve.png        training loss and PSNR against the step
  init_*.png       the initialization: weights, points, render (with its PSNR)
  checkpoints/     training checkpoints (resume with resume=True)
Metrics are computed on the float render at full resolution (banded, bounded memory).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from smartsplat_jax import io as sio
from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.render import render, resolve_backend
from smartsplat_jax.train import config_for_method, fit, initialize

__all__ = ["run_fit", "save_params", "load_params", "check_workdir"]


def check_workdir(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` if needed and checks it is writable; raises OSError naming it."""
    d = Path(workdir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"workdir {d} is not writable ({e.strerror or e})") from None
    return d


def save_params(path: str | os.PathLike, params: P.GaussianParams, height: int, width: int) -> None:
    """Writes raw parameters and the image size as .npz, atomically."""
    buf = io.BytesIO()
    np.savez(buf, height=height, width=width,
             **{k: np.asarray(getattr(params, k)) for k in ("means", "scales", "rotation",
                                                              "colors", "opacity")})
    sio.atomic_write_bytes(path, buf.getvalue())


def load_params(path: str | os.PathLike) -> tuple[P.GaussianParams, int, int]:
    """(params, height, width) from a file written by `save_params`."""
    with np.load(path) as d:
        params = P.GaussianParams(**{k: jax.numpy.asarray(d[k]) for k in
                                     ("means", "scales", "rotation", "colors", "opacity")})
        return params.validate(), int(d["height"]), int(d["width"])


def _curve(history: dict) -> "object":
    from smartsplat_jax.viz import line_plot

    series = {"loss": (history["step"], history["loss"]),
              "train PSNR (dB)": (history["step"], history["train_psnr"])}
    if history["eval"]:
        series["eval PSNR (dB)"] = ([e["step"] for e in history["eval"]],
                                    [e["psnr"] for e in history["eval"]])
    return line_plot(series, xlabel="step")


def run_fit(image_path: str | os.PathLike, workdir: str | os.PathLike, *, cr: float = 20.0,
            method: str = "smartsplat", steps: int = 2000, backend: str = "auto",
            seed: int = 0, resume: bool = False, progress: bool = True,
            visualize: bool = True, **overrides) -> dict:
    """Compresses one image with `method` and writes the outputs listed in the module doc.

    Args:
      image_path: the image file.
      workdir: output folder (created).
      cr: target compression ratio (N = floor(3HW / (7 CR))).
      method: "smartsplat", "random" or "gaussianimage-rs".
      steps: training steps.
      backend: renderer backend.
      seed: PRNG seed of the initialization.
      resume: continue from workdir/checkpoints.
      overrides: further FitConfig fields (lambda_l1, lr_*, chunk_steps, eval_every, ...).

    Returns:
      The metrics dict that is also written to workdir/metrics.json.

    Raises:
      ImageError, ValueError, OSError: bad inputs, with messages naming them.
      TrainingDiverged: NaN/Inf during training.
    """
    config = config_for_method(method, steps=steps, backend=backend, **overrides)
    out = check_workdir(workdir)
    image = sio.load_image(image_path)
    h, w = image.shape[:2]
    n = P.num_gaussians(h, w, cr)

    t0 = time.perf_counter()
    params0, info = initialize(method, jax.random.PRNGKey(seed), image, n)
    jax.block_until_ready(params0)
    init_seconds = time.perf_counter() - t0
    if visualize:  # renders the initialization once, for the pictures and its PSNR
        from smartsplat_jax.viz import save_init_visualization

        init_psnr = save_init_visualization(
            out, image, params0, info if method == "smartsplat" else {"num_variational": 0},
            max_points=20000)["psnr"]
    else:
        init_psnr = metrics.psnr(render(params0, h, w, backend=config.backend), image)

    params, history = fit(image, params0, config, workdir=out, resume=resume, progress=progress)
    rendered = np.asarray(render(params, h, w, backend=config.backend))
    try:
        ms = metrics.ms_ssim(rendered, image)
        ms_note = None
    except ValueError as e:
        ms, ms_note = None, str(e)
    result = {
        "image": str(image_path), "height": h, "width": w, "cr": float(cr), "method": method,
        "num_gaussians": n, "steps": config.steps, "seed": seed,
        "psnr": metrics.psnr(rendered, image), "ssim": metrics.ssim(rendered, image),
        "ms_ssim": ms, "ms_ssim_note": ms_note, "init_psnr": init_psnr,
        "init_seconds": init_seconds, "train_seconds": history["train_seconds"],
        "compile_seconds": history["compile_seconds"],
        # Steady-state rate (compilation excluded); None after a resume, whose timing is split.
        "it_per_s": None if history["resumed_from"] is not None else
        config.steps / max(history["train_seconds"] - history["compile_seconds"], 1e-9),
        "resumed_from": history["resumed_from"],
        "backend": resolve_backend(config.backend), "optimizer": config.optimizer,
        "loss": config.loss, "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(), "jax_version": jax.__version__,
    }
    sio.save_image(out / "recon.png", rendered, overwrite=True)
    save_params(out / "params.npz", params, h, w)
    buf = io.BytesIO()
    _curve(history).save(buf, format="PNG")
    sio.atomic_write_bytes(out / "curve.png", buf.getvalue())
    sio.atomic_write_bytes(out / "history.json", json.dumps(history, indent=1).encode())
    sio.atomic_write_bytes(out / "metrics.json", json.dumps(result, indent=2).encode())
    return result
