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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from smartsplat_jax import losses
from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec.quantize import Grid, QuantSpec, fake_quantize, grid, project
from smartsplat_jax.init.smart import check_image
from smartsplat_jax.render import pair_capacity, render, resolve_backend
from smartsplat_jax.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from smartsplat_jax.train.config import FitConfig
from smartsplat_jax.train.optim import make_optimizer
from smartsplat_jax.train.progress import Progress

__all__ = ["TrainingDiverged", "QatSchedule", "FixedQuantizer", "fit", "loss_value",
           "qat_schedule", "snap"]


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or infinite."""


def loss_value(params: P.GaussianParams, image: jax.Array, config: FitConfig,
               capacity: int | None = None):
    """(loss, mse) of the render of `params` against `image` [H, W, 3] under `config`.

    `capacity`: the pallas backend's pair capacity (static; see `render`)."""
    h, w = image.shape[:2]
    rendered = render(params, h, w, backend=config.backend, capacity=capacity)
    mse = jnp.mean(jnp.square(rendered - image))
    if config.loss == "l2":
        return mse, mse
    return losses.smartsplat_loss(rendered, image, config.lambda_l1), mse


class QatSchedule(NamedTuple):
    """Steps (traced int32 scalars) at which groups reach the quantizer's grid.

    Before `positions`: float training. From `positions`: the positions are snapped to their
    grid and frozen; from `geometry`: the scales and angles too, while the colours keep
    training in float (they are snapped after the last step, see `fit`). Steps >= `positions`
    also project every update into the quantizer's range. A schedule at or past the last step
    means no quantization.
    """

    positions: jax.Array
    geometry: jax.Array


def qat_schedule(config: FitConfig, quantized: bool) -> QatSchedule:
    """The schedule of `config.qat_steps_used` quantization-aware steps at the end of the run
    (half with the positions on the grid, half with the whole geometry), or none."""
    steps = config.steps
    q = config.qat_steps_used if quantized else 0
    if q == 0:
        return QatSchedule(*(jnp.asarray(steps, jnp.int32),) * 2)
    start = steps - q
    return QatSchedule(positions=jnp.asarray(start, jnp.int32),
                       geometry=jnp.asarray(start + q // 2, jnp.int32))


def snap(params: P.GaussianParams, qgrid: Grid, height: int, width: int, positions=True,
         geometry=True, colors=True) -> P.GaussianParams:
    """`params` with the chosen groups replaced by their quantized values (jittable; the flags
    may be traced booleans). Geometry = scales and angles. Snapped values are fixed points."""
    q = fake_quantize(params, qgrid, height, width)
    sel = lambda flag, a, b: jnp.where(flag, jax.lax.stop_gradient(a), b)  # noqa: E731
    return params.replace(means=sel(positions, q.means, params.means),
                          scales=sel(geometry, q.scales, params.scales),
                          rotation=sel(geometry, q.rotation, params.rotation),
                          colors=sel(colors, q.colors, params.colors),
                          opacity=sel(colors, q.opacity, params.opacity))


def _project_colors(params: P.GaussianParams, config: FitConfig) -> P.GaussianParams:
    if config.color_bounds is None:
        return params
    lo, hi = config.color_bounds
    return params.replace(colors=jnp.clip(params.colors, lo, hi))


def _chunk_length(config: FitConfig) -> int:
    """The static scan length of every chunk (shorter chunks skip their last iterations)."""
    return min(config.chunk_steps, config.steps)


@functools.partial(jax.jit, static_argnames=("config", "capacity", "qat"))
def _run_chunk(params, opt_state, image, qgrid, step0, count, schedule, *, config: FitConfig,
               capacity: int | None = None, qat: bool = True):
    """`count` (traced, <= `_chunk_length(config)`) optimizer steps from step `step0`,
    quantization-aware by `schedule` with the quantizer `qgrid`. All of these are traced, so
    a chunk of any length, a new quantizer or a phase switch never recompiles: a run compiles
    one program. `qat` False, for runs without a quantizer, leaves the quantization code out.
    Returns (params, opt_state, losses [L], mses [L], finite) with L = `_chunk_length(config)`
    (entries from `count` on are 0), where finite says every parameter is finite at the end."""
    opt = make_optimizer(config)
    grad_fn = jax.value_and_grad(loss_value, has_aux=True)
    h, w = image.shape[:2]

    def train_step(carry, t):
        p, s = carry
        on_pos, on_geo = t >= schedule.positions, t >= schedule.geometry
        (loss, mse), grads = grad_fn(p, image, config, capacity)
        updates, s = opt.update(grads, s, p)
        if not qat:
            return (_project_colors(optax.apply_updates(p, updates), config), s), (loss, mse)
        lr = jnp.where(on_pos, config.qat_lr_scale, 1.0)
        updates = jax.tree_util.tree_map(lambda u: u * lr.astype(u.dtype), updates)
        keep = lambda flag, u: jnp.where(flag, jnp.zeros_like(u), u)  # noqa: E731  frozen groups
        updates = updates.replace(means=keep(on_pos, updates.means),
                                  scales=keep(on_geo, updates.scales),
                                  rotation=keep(on_geo, updates.rotation))
        p = _project_colors(optax.apply_updates(p, updates), config)
        p = jax.tree_util.tree_map(lambda a, b: jnp.where(on_pos, a, b),
                                   project(p, qgrid, h, w), p)
        p = snap(p, qgrid, h, w, on_pos, on_geo, False)
        return (p, s), (loss, mse)

    def skip(carry, t):
        return carry, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def step(carry, i):
        return jax.lax.cond(i < count, train_step, skip, carry, step0 + i)

    (params, opt_state), (loss, mse) = jax.lax.scan(step, (params, opt_state),
                                                    jnp.arange(_chunk_length(config)))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
    return params, opt_state, loss, mse, finite


def _next_boundary(step: int, config: FitConfig, qat_start: int | None = None) -> int:
    """The step the chunk from `step` ends at: the next multiple of chunk_steps, evaluation,
    checkpoint, the end, or the start of the quantization-aware phase (so that the quantizer
    is planned on the Gaussians of that step and chunks are either float or
    quantization-aware)."""
    candidates = [config.steps, (step // config.chunk_steps + 1) * config.chunk_steps]
    if qat_start is not None and step < qat_start:
        candidates.append(qat_start)
    for every in (config.eval_every, config.checkpoint_every):
        if every:
            candidates.append((step // every + 1) * every)
    return min(candidates)


def _psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


class FixedQuantizer:
    """A quantizer protocol object for one given `QuantSpec` (see `fit`)."""

    def __init__(self, spec: QuantSpec):
        self.spec = spec.check()

    def plan(self, params):
        return self.spec, {}

    def finish(self, params, spec):
        return spec, {}


def fit(image, params: P.GaussianParams, config: FitConfig, *, quantizer=None,
        workdir: str | Path | None = None, resume: bool = False, progress: bool = True,
        stream=None, log_seconds: float = 10.0) -> tuple[P.GaussianParams, dict]:
    """Trains Gaussians on an image, quantization-aware in the last phase when asked.

    Quantization-aware phase (the last `config.qat_steps_used` steps, with a quantizer):
    quantizing all attributes at once with straight-through gradients oscillates (each Adam
    step is comparable to a grid step, so codes flip back and forth) and was measured to end
    below plain rounding, both in long runs and in short ones. What works is incremental
    quantization: groups are snapped to the file's grid and frozen one after the other while
    the rest keep training and compensate (measured on a converged 256^2 crop at CR 50: 0.29 dB
    lost by rounding, 0.14 dB after the phase). So the positions are snapped at the start of
    the phase, the scales and angles half-way, and the colours, which keep training in float
    until the end, after the last step, on the grid the quantizer's `finish` picks (rate
    control chooses their step there, for the exact byte budget). Every update in the phase
    is projected into the quantizer's range. The phase runs in the same compiled chunks as
    the rest of training (its schedule and grid are traced), with the optimizer state
    carried over.

    Args:
      image: [H, W, 3] float in [0, 1].
      params: initial raw parameters (N rows).
      config: the FitConfig (see `config_for_method`).
      quantizer: None (float training throughout), a `codec.QuantSpec`, or an object with
        `plan(params) -> (QuantSpec, info)`, called at the first step of the phase (chunks
        end there), and `finish(params, spec) -> (QuantSpec, info)`, called after the last step
        (it may change the colour grid only, or coarsen everything if nothing else fits), e.g.
        `codec.rate.BudgetQuantizer`.
      workdir: if given, checkpoints go to workdir/checkpoints.
      resume: continue from the newest checkpoint in workdir/checkpoints, if any (a run
        stopped inside the phase keeps its quantizer).
      progress: report progress (a bar on a terminal, log lines elsewhere) on `stream`.

    Returns:
      params: the trained raw parameters; with a quantizer, every attribute lies on the grid
        of history["quant"] (what the file stores, so `render(params)` is the decoded file's
        render up to float rounding).
      history: {"step", "loss", "train_psnr"} per chunk (loss: mean over the chunk;
        train_psnr: of the float render before the chunk's last step), "eval": a list of
        {"step", "psnr", "ssim"}, "train_seconds" (chunks only, compilation included),
        "compile_seconds" (first-chunk overhead estimate), "resumed_from" (step or None),
        "qat_start" (step or None), "quant" (the final QuantSpec as a dict, or None),
        "quant_info" (the quantizer's info from plan and finish), "psnr_before_qat" (of the
        float render when the quantizer was planned).

    Raises:
      TrainingDiverged: NaN/Inf in the loss or parameters; the message names the step, and
        the last good checkpoint on disk is left as it was.
      ValueError: bad config, parameters or image.
    """
    img = check_image(image)
    config.validate()
    params = params.validate()
    if isinstance(quantizer, QuantSpec):
        quantizer = FixedQuantizer(quantizer)
    if quantizer is not None and not (hasattr(quantizer, "plan") and hasattr(quantizer, "finish")):
        raise ValueError(f"quantizer={quantizer!r} must be a codec.QuantSpec, an object with "
                         "plan() and finish() (codec.rate.BudgetQuantizer), or None")
    h, w = int(img.shape[0]), int(img.shape[1])
    opt_state = make_optimizer(config).init(params)
    qat = quantizer is not None and config.qat_steps_used > 0
    qat_start = config.steps - config.qat_steps_used if qat else config.steps
    schedule = qat_schedule(config, qat)
    history = {"step": [], "loss": [], "train_psnr": [], "eval": [], "train_seconds": 0.0,
               "compile_seconds": 0.0, "resumed_from": None,
               "qat_start": qat_start if qat else None, "quant": None, "quant_info": None,
               "psnr_before_qat": None}
    step = 0
    ckpt_dir = Path(workdir) / "checkpoints" if workdir is not None else None
    if resume and ckpt_dir is not None and (path := latest_checkpoint(ckpt_dir)) is not None:
        (params, opt_state), record = load_checkpoint(path, (params, opt_state))
        step = int(record["step"])
        history = {**history, **record["history"]}
        history["resumed_from"] = step
    spec = QuantSpec.from_record(history["quant"]) if history["quant"] else None
    qgrid = grid(spec or QuantSpec())  # a placeholder until the phase starts
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
        length = _next_boundary(step, config, qat_start if qat else None) - step
        if qat and step >= qat_start and spec is None:
            # The phase starts (chunks end at qat_start): plan the quantizer on the Gaussians
            # training has reached.
            history["psnr_before_qat"] = metrics.psnr(
                render(params, h, w, backend=config.backend), img)
            spec, info = quantizer.plan(params)
            qgrid = grid(spec.check())
            history["quant"], history["quant_info"] = spec.record(), dict(info)
            reporter.message(f"quantization-aware from step {qat_start} to {config.steps} "
                             f"(planned at step {step}): {spec.describe()}")
        t0 = time.perf_counter()
        capacity = pair_capacity(params, h, w) if use_pallas else None
        new_params, new_state, loss, mse, finite = _run_chunk(
            params, opt_state, img, qgrid, jnp.asarray(step, jnp.int32),
            jnp.asarray(length, jnp.int32), schedule, config=config, capacity=capacity, qat=qat)
        loss = jax.device_get(loss)[:length]
        mse = jax.device_get(mse)[:length]
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
        if step == config.steps and spec is not None:
            # The colours' grid, for the exact budget, and every attribute on the file's grid.
            spec, info = quantizer.finish(params, spec)
            params = _snap_all(params, grid(spec.check()), h, w)
            history["quant"] = spec.record()
            history["quant_info"] = {**(history["quant_info"] or {}), **dict(info)}
        history["step"].append(step)
        history["loss"].append(float(loss.mean()))
        history["train_psnr"].append(_psnr_from_mse(float(mse[-1])))
        extra = ""
        if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
            rendered = render(params, h, w, backend=config.backend)
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


@functools.partial(jax.jit, static_argnums=(2, 3))
def _snap_all(params, qgrid, height, width):
    return snap(params, qgrid, height, width, True, True, True)
