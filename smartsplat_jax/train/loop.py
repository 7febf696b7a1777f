"""The training loop: jitted chunks of steps inside lax.scan, reporting between chunks.

fit(image, params, config) runs `config.steps` optimizer steps. Steps run in chunks of at
most `chunk_steps` inside one compiled `lax.scan` (no host round trip per step); chunk
boundaries are a pure function of the step number and the config (multiples of
chunk_steps, eval_every and checkpoint_every), so a run resumed from a checkpoint takes the
same chunks, performs the same arithmetic and ends with the same parameters as an
uninterrupted one. Between chunks the loop checks that the losses and parameters are
finite, logs progress, evaluates and writes checkpoints.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from smartsplat_jax import losses
from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec.quantize import fake_quantize
from smartsplat_jax.init.smart import check_image
from smartsplat_jax.render import pair_capacity, render, resolve_backend
from smartsplat_jax.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from smartsplat_jax.train.config import FitConfig
from smartsplat_jax.train.optim import make_optimizer
from smartsplat_jax.train.progress import Progress

__all__ = ["TrainingDiverged", "effective_params", "fit", "loss_value"]


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or infinite."""


def effective_params(params: P.GaussianParams, config: FitConfig, height: int,
                     width: int) -> P.GaussianParams:
    """The parameters the loss renders: quantized (straight-through) when config.quant is set."""
    if config.quant is None:
        return params
    return fake_quantize(params, config.quant, height, width)


def loss_value(params: P.GaussianParams, image: jax.Array, config: FitConfig,
               capacity: int | None = None):
    """(loss, mse) of the render of `params` against `image` [H, W, 3] under `config`.

    `capacity`: the pallas backend's pair capacity (static; see `render`)."""
    h, w = image.shape[:2]
    rendered = render(effective_params(params, config, h, w), h, w, backend=config.backend,
                      capacity=capacity)
    mse = jnp.mean(jnp.square(rendered - image))
    if config.loss == "l2":
        return mse, mse
    return losses.smartsplat_loss(rendered, image, config.lambda_l1), mse


@functools.partial(jax.jit, static_argnames=("config", "length", "capacity"))
def _run_chunk(params, opt_state, image, *, config: FitConfig, length: int,
               capacity: int | None = None):
    """`length` optimizer steps. Returns (params, opt_state, losses [length], mses [length],
    finite), where finite says every parameter is finite at the end."""
    opt = make_optimizer(config)
    grad_fn = jax.value_and_grad(loss_value, has_aux=True)

    def step(carry, _):
        p, s = carry
        (loss, mse), grads = grad_fn(p, image, config, capacity)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), (loss, mse)

    (params, opt_state), (loss, mse) = jax.lax.scan(step, (params, opt_state), None, length=length)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
    return params, opt_state, loss, mse, finite


def _next_boundary(step: int, config: FitConfig) -> int:
    candidates = [config.steps, (step // config.chunk_steps + 1) * config.chunk_steps]
    for every in (config.eval_every, config.checkpoint_every):
        if every:
            candidates.append((step // every + 1) * every)
    return min(candidates)


def _psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def fit(image, params: P.GaussianParams, config: FitConfig, *, workdir: str | Path | None = None,
        resume: bool = False, progress: bool = True, stream=None,
        log_seconds: float = 10.0) -> tuple[P.GaussianParams, dict]:
    """Trains Gaussians on an image.

    Args:
      image: [H, W, 3] float in [0, 1].
      params: initial raw parameters (N rows).
      config: the FitConfig (see `config_for_method`).
      workdir: if given, checkpoints go to workdir/checkpoints.
      resume: continue from the newest checkpoint in workdir/checkpoints, if any.
      progress: report progress (a bar on a terminal, log lines elsewhere) on `stream`.

    Returns:
      params: the trained parameters.
      history: {"step", "loss", "train_psnr"} per chunk (loss: mean over the chunk;
        train_psnr: of the float render before the chunk's last step), "eval": a list of
        {"step", "psnr", "ssim"}, "train_seconds" (chunks only, compilation included),
        "compile_seconds" (first-chunk overhead estimate), "resumed_from" (step or None).

    Raises:
      TrainingDiverged: NaN/Inf in the loss or parameters; the message names the step, and
        the last good checkpoint on disk is left as it was.
      ValueError: bad config, parameters or image.
    """
    img = check_image(image)
    config.validate()
    params = params.validate()
    h, w = int(img.shape[0]), int(img.shape[1])
    opt_state = make_optimizer(config).init(params)
    history = {"step": [], "loss": [], "train_psnr": [], "eval": [], "train_seconds": 0.0,
               "compile_seconds": 0.0, "resumed_from": None}
    step = 0
    ckpt_dir = Path(workdir) / "checkpoints" if workdir is not None else None
    if resume and ckpt_dir is not None and (path := latest_checkpoint(ckpt_dir)) is not None:
        (params, opt_state), record = load_checkpoint(path, (params, opt_state))
        step = int(record["step"])
        history = record["history"]
        history["resumed_from"] = step
    reporter = Progress(config.steps, start=step, stream=stream, log_seconds=log_seconds,
                        enabled=progress)
    if step >= config.steps:
        return params, history
    if history["resumed_from"] is not None:
        reporter.message(f"resumed from step {step} ({path})")
    first = None  # (steps, seconds) of this session's first chunk, which includes compilation
    # The pallas rasterizer's pair list has a static length: size it from the actual pair
    # count before each chunk, in power-of-two buckets (a recompile only when the bucket
    # changes; a chunk that outgrows it stays correct through the xla fallback).
    use_pallas = resolve_backend(config.backend) == "pallas"
    session_steps, session_seconds = 0, 0.0
    while step < config.steps:
        length = _next_boundary(step, config) - step
        t0 = time.perf_counter()
        capacity = (pair_capacity(effective_params(params, config, h, w), h, w)
                    if use_pallas else None)
        new_params, new_state, loss, mse, finite = _run_chunk(
            params, opt_state, img, config=config, length=length, capacity=capacity)
        loss = jax.device_get(loss)
        mse = jax.device_get(mse)
        elapsed = time.perf_counter() - t0
        bad = [i for i, v in enumerate(loss) if not math.isfinite(float(v))]
        if bad or not bool(finite):
            where = step + (bad[0] + 1 if bad else length)
            last = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
            kept = f"; the last good checkpoint is {last}" if last else ""
            what = f"the loss became {float(loss[bad[0]])}" if bad else "a parameter became NaN/Inf"
            raise TrainingDiverged(f"training stopped at step {where}: {what}{kept}. "
                                   "Try lower learning rates or check the input image.")
        params, opt_state = new_params, new_state
        first = first or (length, elapsed)
        session_steps += length
        session_seconds += elapsed
        history["train_seconds"] += elapsed
        step += length
        history["step"].append(step)
        history["loss"].append(float(loss.mean()))
        history["train_psnr"].append(_psnr_from_mse(float(mse[-1])))
        extra = ""
        if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
            rendered = render(effective_params(params, config, h, w), h, w,
                              backend=config.backend)
            ev = {"step": step, "psnr": metrics.psnr(rendered, img),
                  "ssim": metrics.ssim(rendered, img)}
            history["eval"].append(ev)
            extra = f"| eval psnr {ev['psnr']:.2f} ssim {ev['ssim']:.4f}"
        if ckpt_dir is not None and ((config.checkpoint_every and step % config.checkpoint_every == 0)
                                     or step == config.steps):
            save_checkpoint(ckpt_dir, step, (params, opt_state), {"history": history})
        reporter.update(step, history["loss"][-1], history["train_psnr"][-1], extra)
    if first is not None and session_steps > first[0]:
        # The first chunk's time beyond what the later chunks' rate predicts for it.
        per_step = (session_seconds - first[1]) / (session_steps - first[0])
        history["compile_seconds"] = max(0.0, first[1] - per_step * first[0])
    return params, history
