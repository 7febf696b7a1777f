"""The training loop: jitted chunks of steps inside lax.scan, reporting between chunks.

fit(image, params, config) runs `config.steps` optimizer steps. Steps run in chunks of at
most `chunk_steps` inside one compiled `lax.scan` (no host round trip per step); chunk
boundaries are a pure function of the step number and the config (multiples of
chunk_steps, eval_every and checkpoint_every), so a run resumed from a checkpoint takes the
same chunks, performs the same arithmetic and ends with the same parameters as an
uninterrupted one (bit for bit on CPU).

Robustness (nothing a long run meets stops it without a result):
  * Inside a step, non-finite gradient entries are zeroed before the optimizer sees them
    (so NaN never reaches Adam's moments), a step whose loss is not finite changes nothing,
    and raw scales are kept at or above `params.SCALE_FLOOR` in magnitude (the renderers
    floor them there anyway; this keeps their gradient alive). The chunk reports, per
    attribute, how many Gaussians had non-finite gradients; the loop logs it.
  * A chunk whose loss or parameters are not finite rolls back to its start and runs again
    with every learning rate scaled by `retry_lr_factor` (a traced value: no recompilation),
    up to `max_retries` times in a row; then `TrainingDiverged` carries the last good
    parameters (callers write them: `pipeline.run_fit` writes params.npz and a decodable
    file). This is why a chunk does not donate its input parameters and optimizer state
    (`donate_argnums`): they are the rollback point. Keeping them costs 108 B per Gaussian
    (9 float32 parameters and Adam's two moments; 180 B with Adan's four), against about
    180 B per pixel of the loss's and rasterizer's temporaries (`train.sharded`'s measured
    formula): at the paper's N and CR >= 20, under 2 % of the step's memory.
  * With a workdir: checkpoints every `checkpoint_every` steps hold the whole state
    (parameters, optimizer state, step, history; training draws no random numbers) and a
    fingerprint of the run (image, N, training config, budget, caller's run info). A rerun
    resumes from the newest readable checkpoint of the same run (an unreadable newest
    falls back to the previous one), refuses another run's checkpoints with a clear error,
    or, with resume=False, deletes them first. SIGINT and SIGTERM finish the current chunk,
    write a checkpoint and raise `TrainingInterrupted` (a second signal stops at once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smartsplat_jax import losses
from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec.prune import prune
from smartsplat_jax.codec.quantize import Grid, QuantSpec, fake_quantize, grid, project
from smartsplat_jax.codec.rounding import nearest_round
from smartsplat_jax.init.smart import check_image
from smartsplat_jax.render import pair_capacity, render, resolve_backend
from smartsplat_jax.train.checkpoint import (clear_checkpoints, latest_checkpoint, load_latest,
                                             save_checkpoint)
from smartsplat_jax.train.config import FitConfig
from smartsplat_jax.train.optim import Hyperparams, hyperparams, make_optimizer
from smartsplat_jax.train.relocate import check_relocatable, relocate, relocates_at
from smartsplat_jax.train.progress import Progress

__all__ = ["TrainingDiverged", "TrainingInterrupted", "QatSchedule", "FixedQuantizer", "fit",
           "loss_value", "qat_schedule", "snap", "run_fingerprint"]


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters stayed NaN/Inf after every retry.

    Attributes:
      step: the first step found non-finite in the last retry.
      good_step: the step of `params`, the last finite state (the chunk's start).
      params: the last good raw parameters (never None when raised by `fit`).
      history: the training history up to `good_step`.
    """

    def __init__(self, message: str, *, step=None, good_step=None, params=None, history=None):
        super().__init__(message)
        self.step, self.good_step, self.params, self.history = step, good_step, params, history


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training between two chunks, after writing a checkpoint.

    Attributes: step (where it stopped), checkpoint (the file written, or None without a
    workdir), signum (the signal), exit_code (128 + signum, the shell's convention)."""

    def __init__(self, message: str, *, step: int, checkpoint, signum: int):
        super().__init__(message)
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        self.exit_code = 128 + int(signum)


class _StopRequests:
    """Turns the first SIGINT/SIGTERM into a request the loop honours after the current chunk
    (a second one raises KeyboardInterrupt at once). Only in the main thread."""

    def __init__(self, stream=None):
        self.signum = None
        self.stream = stream or sys.stderr
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        self.stream.write(f"\n{signal.Signals(signum).name}: stopping after the current chunk to "
                          "write a checkpoint (send it again to stop at once)\n")
        self.stream.flush()

    def _restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def loss_value(params: P.GaussianParams, image: jax.Array, config: FitConfig,
               capacity: int | None = None, loss_fn=None):
    """(loss, mse) of the render of `params` against `image` [H, W, 3] under `config`, or
    under `loss_fn(rendered, image) -> scalar` when given (see `fit`).

    `capacity`: the pallas backend's pair capacity (static; see `render`)."""
    h, w = image.shape[:2]
    rendered = render(params, h, w, backend=config.backend, capacity=capacity)
    mse = jnp.mean(jnp.square(rendered - image))
    if loss_fn is not None:
        return loss_fn(rendered, image), mse
    if config.loss == "l2":
        return mse, mse
    return losses.smartsplat_loss(rendered, image, config.lambda_l1), mse


class QatSchedule(NamedTuple):
    """The step (traced int32) at which each Gaussian's groups reach the quantizer's grid:
    [N, 1] per Gaussian, or scalars for all.

    Before a Gaussian's `positions` step its parameters train in float; from it, its position
    is snapped to the grid and frozen, and its updates are projected into the quantizer's
    range; from its `geometry` step, its scales and angle are snapped and frozen too, while
    the colours keep training in float (they are snapped after the last step, see `fit`). A
    schedule at or past the last step means no quantization.
    """

    positions: jax.Array
    geometry: jax.Array


def qat_schedule(config: FitConfig, quantized: bool, num: int) -> QatSchedule:
    """The schedule of `config.qat_steps_used` quantization-aware steps at the end of the run,
    or none (every group reaches the grid at the last step, i.e. never), for N = `num`
    Gaussians: [N, 1] steps whatever the stages, so that runs with one stage and with several
    share one compiled training step.

    The positions reach the grid in the first half of the phase and the scales and angles in
    the second, each in `config.qat_stages_used` stages spread evenly over its half (stage k
    of S at k / S of it; `train.config.default_qat_stages` keeps stages tens of steps
    long). Stage k holds the Gaussians ranked k / stages to (k + 1) / stages in a fixed
    random order (a permutation from key 0 that depends on `num` alone, so that a resumed run
    has the same schedule): snapping a random share at a time leaves free neighbours
    everywhere to compensate (incremental quantization, as INQ, Zhou et al., ICLR 2017,
    quantizes network weights). With one stage, every Gaussian snaps at the start of its half.
    """
    steps = config.steps
    q = config.qat_steps_used if quantized else 0
    if q == 0:
        never = jnp.full((num, 1), steps, jnp.int32)
        return QatSchedule(never, never)
    start, half, stages = steps - q, q // 2, config.qat_stages_used
    stage = np.zeros(num, np.int64)
    if stages > 1:
        rank = np.asarray(jax.random.permutation(jax.random.PRNGKey(0), num), np.int64)
        stage = rank * stages // num
    offsets = [stage * (length // stages) for length in (half, q - half)]
    return QatSchedule(positions=jnp.asarray(start + offsets[0], jnp.int32)[:, None],
                       geometry=jnp.asarray(start + half + offsets[1], jnp.int32)[:, None])


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


def _project_colors(params: P.GaussianParams, hyper: Hyperparams) -> P.GaussianParams:
    """Colours into the training box; a blended set's opacities into [0, 1] (alpha)."""
    params = params.replace(colors=jnp.clip(params.colors, hyper.color_lo, hyper.color_hi))
    if params.blend:
        params = params.replace(opacity=jnp.clip(params.opacity, 0.0, 1.0))
    return params


# The FitConfig fields a compiled training chunk depends on. Every other field is either a
# traced value (`train.optim.Hyperparams`: rates, their schedule, the loss weight, the phase
# factor, the colour box) or read on the host between chunks (steps, phases, evaluation,
# checkpoints, retries), so changing it never recompiles.
COMPILED_FIELDS = ("loss", "optimizer", "backend", "chunk_steps", "devices")


def compiled_config(config: FitConfig) -> FitConfig:
    """The compile-time part of `config`: its `COMPILED_FIELDS`, every other field at its
    default (the key `_run_chunk` is compiled for). Resolve backend "auto" first (`fit` does)."""
    return FitConfig(**{f: getattr(config, f) for f in COMPILED_FIELDS})


def _floor_covariance(params):
    """Scales (or the Cholesky diagonal) kept at or above SCALE_FLOOR in magnitude, where the
    renderers floor them anyway: this keeps their gradient alive."""
    if isinstance(params, P.CholeskyParams):
        return params.replace(cholesky=jnp.stack(P.cholesky_factor(params.cholesky), -1))
    return params.replace(scales=P.floor_magnitude(params.scales))


@functools.partial(jax.jit, static_argnames=("config", "capacity", "qat", "loss_fn", "optimizer",
                                             "mesh", "size"))
def _run_chunk(params, opt_state, image, qgrid, step0, count, schedule, lr_scale, hyper, *,
               config: FitConfig, capacity: int | None = None, qat: bool = True,
               loss_fn=None, optimizer=None, mesh=None, size=None):
    """`count` (traced, <= `config.chunk_steps`) optimizer steps from step `step0`,
    quantization-aware by `schedule` with the quantizer `qgrid`, with the hyperparameters
    `hyper` (`train.optim.Hyperparams`), every update scaled by `lr_scale`. All of these are
    traced, so a chunk of any length, a new quantizer, a phase switch, new learning rates or
    a retry at a smaller step never recompiles: a run compiles one program. `config` is the
    static part (`compiled_config`). `qat` False, for runs without a quantizer, leaves the
    quantization code out.

    Returns (params, opt_state, losses [L], mses [L], finite, bad) with L =
    `config.chunk_steps` (entries from `count` on are 0), finite: every parameter is
    finite at the end, bad: [F] int32, per field of the params (`leaf_names`) the number
    of (Gaussian, step) pairs whose gradient had a non-finite entry (zeroed before the
    optimizer). `loss_fn`, `optimizer`: see `fit` (None: the config's).
    `mesh`: with a `train.sharded.block_mesh`, `image` is the blocked target
    (`sharded.shard_target`) of an image of `size` (H, W), and the loss runs block by
    block."""
    opt = optimizer if optimizer is not None else make_optimizer(config, hyper)
    config = dataclasses.replace(config, lambda_l1=hyper.lambda_l1)  # traced inside the step
    h, w = size if mesh is not None else image.shape[:2]
    if mesh is not None:
        from smartsplat_jax.train.sharded import sharded_loss

        def value(p, target, cfg, capacity):
            return sharded_loss(p, target, h, w, mesh, cfg.lambda_l1, cfg.loss)
    else:
        value = loss_value if loss_fn is None else functools.partial(loss_value, loss_fn=loss_fn)
    grad_fn = jax.value_and_grad(value, has_aux=True)

    def train_step(carry, t):
        p, s, bad = carry
        on_pos, on_geo = t >= schedule.positions, t >= schedule.geometry
        (loss, mse), grads = grad_fn(p, image, config, capacity)
        nonfinite = [~jnp.isfinite(g) for g in jax.tree_util.tree_leaves(grads)]
        bad = bad + jnp.stack([jnp.sum(jnp.any(m, axis=-1)).astype(jnp.int32)
                               for m in nonfinite])
        grads = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(grads),
            [jnp.where(m, jnp.zeros_like(g), g)
             for g, m in zip(jax.tree_util.tree_leaves(grads), nonfinite)])
        updates, new_s = opt.update(grads, s, p)
        lr = lr_scale if not qat else lr_scale * jnp.where(on_pos, hyper.qat_lr_scale, 1.0)
        updates = jax.tree_util.tree_map(lambda u: u * lr.astype(u.dtype), updates)
        if qat:
            keep = lambda flag, u: jnp.where(flag, jnp.zeros_like(u), u)  # noqa: E731  frozen
            updates = updates.replace(means=keep(on_pos, updates.means),
                                      scales=keep(on_geo, updates.scales),
                                      rotation=keep(on_geo, updates.rotation))
            if not p.blend:  # pruned at the phase's start (colour 0): frozen, out of the file
                gone = (t >= jnp.min(schedule.positions)) & jnp.all(p.colors == 0, -1,
                                                                    keepdims=True)
                updates = jax.tree_util.tree_map(lambda u: keep(gone, u), updates)
        new_p = _project_colors(optax.apply_updates(p, updates), hyper)
        new_p = _floor_covariance(new_p)
        if qat:
            new_p = jax.tree_util.tree_map(lambda a, b: jnp.where(on_pos, a, b),
                                           project(new_p, qgrid, h, w), new_p)
            new_p = snap(new_p, qgrid, h, w, on_pos, on_geo, False)
        # A step whose loss is not finite changes nothing (the chunk is then rolled back).
        ok = jnp.isfinite(loss)
        p, s = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), (new_p, new_s), (p, s))
        return (p, s, bad), (loss, mse)

    def skip(carry, t):
        return carry, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def step(carry, i):
        return jax.lax.cond(i < count, train_step, skip, carry, step0 + i)

    bad0 = jnp.zeros((len(params.leaf_names),), jnp.int32)
    (params, opt_state, bad), (loss, mse) = jax.lax.scan(
        step, (params, opt_state, bad0), jnp.arange(config.chunk_steps))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)]))
    return params, opt_state, loss, mse, finite, bad


def _next_boundary(step: int, config: FitConfig, qat_start: int | None = None) -> int:
    """The step the chunk from `step` ends at: the next multiple of chunk_steps, evaluation,
    checkpoint, relocation, the end, or the start of the quantization-aware phase (so that
    the quantizer is planned on the Gaussians of that step and chunks are either float or
    quantization-aware)."""
    candidates = [config.steps, (step // config.chunk_steps + 1) * config.chunk_steps]
    if qat_start is not None and step < qat_start:
        candidates.append(qat_start)
    for every in (config.eval_every, config.checkpoint_every, config.relocate_every):
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


# FitConfig fields that may change between a run and its resumption: they schedule the work
# (how long, how it is chunked, evaluated and saved, when it prunes or relocates, how
# failures are retried) without changing what one step computes. The result equals the
# uninterrupted run's bit for bit when chunk_steps, eval_every, checkpoint_every and
# relocate_every are unchanged too.
_RESUMABLE_CHANGES = ("steps", "qat_steps", "qat_stages", "prune_mse", "relocate_every",
                      "chunk_steps", "eval_every", "checkpoint_every", "backend", "max_retries",
                      "retry_lr_factor", "devices")


# The layout of the optimizer state in checkpoints. 2: one direction (Adam/Adan) over all
# parameters, then per-group rates with their own step count (`train.optim.make_optimizer`).
_STATE_FORMAT = 2

_START_OVER = ("start over, which deletes them (resume=False; experiments.fit --noresume; "
               "smartsplat compress --restart)")


def run_fingerprint(image, num: int, config: FitConfig, quantizer=None,
                    run_info: dict | None = None) -> dict:
    """What identifies a training run for its checkpoints (JSON-ready): a hash of the image,
    its size, N, the config fields that change the arithmetic, the quantizer's byte budget
    and the caller's `run_info` (e.g. method, seed, CR)."""
    arr = np.ascontiguousarray(np.asarray(image, np.float32))
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_CHANGES}
    fp = {"image": hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest(),
          "size": list(arr.shape[:2]), "num_gaussians": int(num), "config": cfg,
          "budget": getattr(quantizer, "budget", None), "state_format": _STATE_FORMAT,
          **(run_info or {})}
    if isinstance(quantizer, FixedQuantizer):
        fp["quant"] = quantizer.spec.record()
    return json.loads(json.dumps(fp))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k} ({x!r} there, {y!r} now)" if k != "image"
                       else f"{prefix}image (another image)")
    return out


def _backend_for_resume(recorded: str | None, config: FitConfig, reporter) -> FitConfig:
    """With backend "auto", a resumed run keeps the backend its checkpoints were written
    with (same arithmetic) when that backend runs here."""
    if config.backend != "auto" or recorded is None:
        return config
    here = resolve_backend("auto")
    if recorded == here:
        return config
    from smartsplat_jax.render.pallas import triton_supported

    if recorded == "xla" or (recorded == "pallas" and triton_supported()[0]):
        reporter.message(f"backend: {recorded}, as the checkpoint was written with (auto "
                         f"would pick {here} here)")
        return dataclasses.replace(config, backend=recorded)
    reporter.message(f"backend: {here}; the checkpoint was written with {recorded}, which "
                     "cannot run here (the rest of the run is not bit-identical)")
    return config


def fit(image, params: P.GaussianParams, config: FitConfig, *, quantizer=None,
        workdir: str | Path | None = None, resume: bool = True, run_info: dict | None = None,
        progress: bool = True, stream=None, log_seconds: float = 10.0,
        handle_signals: bool = True, loss_fn=None,
        optimizer: optax.GradientTransformation | None = None) -> tuple[P.GaussianParams, dict]:
    """Trains Gaussians on an image, quantization-aware in the last phase when asked.

    Quantization-aware phase (the last `config.qat_steps_used` steps, with a quantizer):
    quantizing all attributes at once with straight-through gradients oscillates (each Adam
    step is comparable to a grid step, so codes flip back and forth) and was measured to end
    below plain rounding, both in long runs and in short ones. What works is incremental
    quantization: groups are snapped to the file's grid and frozen one after the other while
    the rest keep training and compensate (measured on a converged 256^2 crop at CR 50: 0.29 dB
    lost by rounding, 0.14 dB after the phase). So the positions are snapped in the first half
    of the phase, the scales and angles in the second (each in `config.qat_stages_used`
    stages of a random share of the Gaussians, `qat_schedule`), and the colours, which keep
    training in float until the end, after the last step, on the grid the quantizer's
    `finish` picks (rate control chooses their step there, for the exact byte budget;
    `BudgetQuantizer.round` then picks their codes for the render, `codec.rounding`). Every
    update of a snapped group is projected into the quantizer's range. The phase runs in the
    same compiled chunks as the rest of training (its schedule and grid are traced), with the
    optimizer state carried over. At its start, before the quantizer is planned, the
    Gaussians of an additive set that the render does not need (`config.prune_mse`,
    `codec.prune`) get colour 0 and stay frozen: the file leaves them out.

    Failures (see the module docstring): non-finite gradients are zeroed, non-finite chunks
    are rolled back and retried at smaller steps, and only then `TrainingDiverged` is
    raised, carrying the last good parameters.

    Args:
      image: [H, W, 3] float in [0, 1].
      params: initial raw parameters (N rows).
      config: the FitConfig (see `config_for_method`).
      quantizer: None (float training throughout), a `codec.QuantSpec`, or an object with
        `plan(params) -> (QuantSpec, info)`, called at the first step of the phase (chunks
        end there), and `finish(params, spec) -> (QuantSpec, info)`, called after the last step
        (it may change the colour grid only, or coarsen everything if nothing else fits), e.g.
        `codec.rate.BudgetQuantizer`; optionally `round(params, spec) -> (params, spec,
        info)`, the params on that grid or on one with a coarser colour step, and that spec
        (default: nearest codes on `spec`; `BudgetQuantizer` compensates the colours'
        rounding, `codec.rounding`).
      workdir: if given, checkpoints go to workdir/checkpoints.
      resume: True: continue from the newest readable checkpoint in workdir/checkpoints if
        it belongs to this run (`run_fingerprint`; a run stopped inside the phase keeps its
        quantizer), raise ValueError if it belongs to another; False: delete the workdir's
        checkpoints and start from `params`.
      run_info: JSON-ready facts that identify the run beyond the image and the config
        (method, seed, CR...), part of the checkpoints' fingerprint.
      progress: report progress (a bar on a terminal, log lines elsewhere) on `stream`.
      handle_signals: catch SIGINT/SIGTERM to checkpoint before stopping (main thread only).
      loss_fn: None (the config's `loss`), or your own loss: a jax-traceable function
        `loss_fn(rendered [H, W, 3], image [H, W, 3]) -> scalar` to minimise, e.g.
        `lambda r, t: jnp.mean(jnp.abs(r - t))`. The PSNR reported is still of the MSE.
      optimizer: None (`make_optimizer(config)`: Adam or Adan per parameter group at the
        config's rates), or any optax transform over `GaussianParams`, e.g.
        `optax.multi_transform` of your groups or `optax.adamw(1e-3)`. Everything else is
        kept: non-finite gradients zeroed first, the retry factor and the quantization-aware
        freezing applied to its updates, colour and scale projections after them.
      `loss_fn` and `optimizer` are compiled into the training step (pass the same objects to
      reuse a compiled step); checkpoints record their names, so resume with the same ones.

    Returns:
      params: the trained raw parameters; with a quantizer, every attribute lies on the grid
        of history["quant"] (what the file stores, so `render(params)` is the decoded file's
        render up to float rounding).
      history: {"step", "loss", "train_psnr", "seconds"} per chunk (loss: mean over the
        chunk; train_psnr: of the float render before the chunk's last step; seconds: training
        time up to the chunk's end, compilation included), "eval": a list of
        {"step", "psnr", "ssim"}, "train_seconds" (chunks only, compilation included),
        "compile_seconds" (first-chunk overhead estimate), "resumed_from" (step or None),
        "qat_start" (step or None), "qat_stages" (`FitConfig.qat_stages_used`, or None),
        "quant" (the final QuantSpec as a dict, or None),
        "quant_info" (the quantizer's info from plan and finish), "psnr_before_qat" (of the
        float render when the quantizer was planned), "pruned" (the Gaussians that add
        nothing from the phase's start on, `codec.prune.prune`; None without the phase),
        "relocated" (one {"step", "moved"} per relocation, `FitConfig.relocate_every`),
        "rollbacks" (one dict per retried
        chunk: step, reason, lr_scale), "nonfinite_grads" (one dict per chunk that zeroed
        non-finite gradients: from, to, and the count per attribute), "backend".

    Raises:
      TrainingDiverged: NaN/Inf after `config.max_retries` retries; it carries the last good
        parameters, and the checkpoints on disk are left as they were.
      TrainingInterrupted: SIGINT/SIGTERM (after writing a checkpoint when there is a workdir).
      ValueError: bad config, parameters or image; a workdir holding another run's checkpoints.
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
    if quantizer is not None and not isinstance(params, P.GaussianParams):
        raise ValueError(f"quantizer={quantizer!r} needs GaussianParams (the file's scales and "
                         f"angles), not {type(params).__name__}: train without a quantizer "
                         "and encode params.to_gaussian_params()")
    names = params.leaf_names
    if config.relocate_every:
        check_relocatable(params, config.relocate_every)
    _check_custom(loss_fn, optimizer, img)
    mesh = _mesh(config, loss_fn, params.blend)
    if loss_fn is not None or optimizer is not None:
        run_info = {**(run_info or {}),
                    "loss_fn": None if loss_fn is None else _name(loss_fn),
                    "optimizer": None if optimizer is None else "custom optax transform"}
    reporter = Progress(config.steps, start=0, stream=stream, log_seconds=log_seconds,
                        enabled=progress)
    opt_state = (optimizer if optimizer is not None else make_optimizer(config)).init(params)
    qat = quantizer is not None and config.qat_steps_used > 0
    qat_start = config.steps - config.qat_steps_used if qat else config.steps
    schedule = qat_schedule(config, qat, params.num)
    history = {"step": [], "loss": [], "train_psnr": [], "seconds": [], "eval": [],
               "train_seconds": 0.0,
               "compile_seconds": 0.0, "resumed_from": None,
               "qat_start": qat_start if qat else None,
               "qat_stages": config.qat_stages_used if qat else None, "quant": None,
               "quant_info": None,
               "psnr_before_qat": None, "pruned": None, "relocated": [], "rollbacks": [],
               "nonfinite_grads": [],
               "backend": None, "devices": 1}
    step = 0
    ckpt_dir = Path(workdir) / "checkpoints" if workdir is not None else None
    fingerprint = None
    if ckpt_dir is not None:
        fingerprint = run_fingerprint(img, params.num, config, quantizer, run_info)
        if not resume:
            if (gone := clear_checkpoints(ckpt_dir)):
                reporter.message(f"starting over: deleted {gone} checkpoint(s) in {ckpt_dir}")
        else:
            def accept(record):
                if "fingerprint" not in record:
                    raise ValueError(
                        f"{ckpt_dir} holds checkpoints without a run fingerprint (written by "
                        "smartsplat-jax before checkpoints recorded which run they belong "
                        f"to); use another workdir, or {_START_OVER}")
                written = (record["fingerprint"] or {}).get("state_format", 1)
                if written != _STATE_FORMAT:
                    raise ValueError(
                        f"{ckpt_dir} holds checkpoints of training-state format {written} "
                        f"(written by an older smartsplat-jax); this version resumes format "
                        f"{_STATE_FORMAT} only; use another workdir, or {_START_OVER}")
                diff = _differences(record["fingerprint"] or {}, fingerprint)
                if diff:
                    raise ValueError(
                        f"{ckpt_dir} holds checkpoints of another run (differs in: "
                        f"{', '.join(diff)}); use another workdir, or {_START_OVER}")
                rec_hist = record.get("history") or {}
                was = (rec_hist.get("qat_start"), rec_hist.get("qat_stages", 1))
                if rec_hist.get("quant") and was != (history["qat_start"],
                                                     history["qat_stages"]):
                    raise ValueError(
                        f"{ckpt_dir}: the checkpoint is inside the quantization-aware phase "
                        f"that started at step {was[0]} and snaps in {was[1]} stage(s); this "
                        f"config starts it at {history['qat_start']} in "
                        f"{history['qat_stages']}: resume with the same steps, qat_steps and "
                        f"qat_stages, or {_START_OVER}")

            loaded = load_latest(ckpt_dir, (params, opt_state), accept=accept)
            if loaded is not None:
                (params, opt_state), record, path, skipped = loaded
                for why in skipped:
                    reporter.message(f"skipped an unreadable checkpoint: {why}")
                step = int(record["step"])
                # This config's phase (the same as the checkpoint's when inside it, `accept`).
                phase = {k: history[k] for k in ("qat_start", "qat_stages")}
                history = {**history, **record["history"], **phase}
                # Checkpoints from before "seconds" was kept: unknown times for those chunks.
                history["seconds"] = ([math.nan] * (len(history["step"]) - len(history["seconds"]))
                                      + list(history["seconds"]))
                history["resumed_from"] = step
                config = _backend_for_resume(record.get("backend"), config, reporter)
                reporter.message(f"resumed from step {step} ({path})")
    # "auto" is resolved here, once, before anything is compiled; the chunks, evaluations and
    # the quantizer's renders all get the concrete backend.
    config = dataclasses.replace(config, backend=resolve_backend(config.backend))
    history["backend"] = config.backend
    compiled, hyper = compiled_config(config), hyperparams(config)
    target = img
    if mesh is not None:  # the target in bands, the state replicated on the mesh
        from jax.sharding import NamedSharding, PartitionSpec

        from smartsplat_jax.train.sharded import shard_target

        target = shard_target(img, mesh)
        params, opt_state = jax.device_put((params, opt_state),
                                           NamedSharding(mesh, PartitionSpec()))
    history["devices"] = config.devices
    spec = QuantSpec.from_record(history["quant"]) if history["quant"] else None
    qgrid = grid(spec or QuantSpec())  # a placeholder until the phase starts
    reporter.start = step
    if step >= config.steps:
        return params, history
    first = None  # (steps, seconds) of this session's first chunk, which includes compilation
    # The pallas rasterizer's pair list has a static length: size it from the actual pair
    # count before each chunk, in power-of-two buckets (a recompile only when the bucket
    # changes; a chunk that outgrows it stays correct through the xla fallback).
    use_pallas = history["backend"] == "pallas"
    session_steps, session_seconds = 0, 0.0
    retries, lr_scale = 0, 1.0

    def checkpoint(at_step):
        return save_checkpoint(ckpt_dir, at_step, (params, opt_state),
                               {"history": history, "fingerprint": fingerprint,
                                "backend": history["backend"]})

    stops = _StopRequests() if handle_signals else None
    with (stops or contextlib.nullcontext()):
        while step < config.steps:
            length = _next_boundary(step, config, qat_start if qat else None) - step
            if qat and step >= qat_start and spec is None:
                # The phase starts (chunks end at qat_start): plan the quantizer on the
                # Gaussians training has reached.
                history["psnr_before_qat"] = metrics.psnr(
                    render(params, h, w, backend=config.backend), img)
                params, history["pruned"] = prune(params, h, w, config.prune_mse)
                spec, info = quantizer.plan(params)
                qgrid = grid(spec.check())
                history["quant"], history["quant_info"] = spec.record(), dict(info)
                gone = (f"; {history['pruned']} of {params.num} Gaussians invisible, left out "
                        "of the file" if history["pruned"] else "")
                reporter.message(f"quantization-aware from step {qat_start} to {config.steps} "
                                 f"(planned at step {step}): {spec.describe()}{gone}")
            t0 = time.perf_counter()
            capacity = pair_capacity(params, h, w) if use_pallas and mesh is None else None
            new_params, new_state, loss, mse, finite, bad_grads = _run_chunk(
                params, opt_state, target, qgrid, jnp.asarray(step, jnp.int32),
                jnp.asarray(length, jnp.int32), schedule, jnp.asarray(lr_scale, jnp.float32),
                hyper, config=compiled, capacity=capacity, qat=qat, loss_fn=loss_fn,
                optimizer=optimizer, mesh=mesh, size=(h, w))
            loss = jax.device_get(loss)[:length]
            mse = jax.device_get(mse)[:length]
            bad_grads = [int(x) for x in jax.device_get(bad_grads)]
            elapsed = time.perf_counter() - t0
            bad = [i for i, v in enumerate(loss) if not math.isfinite(float(v))]
            if bad or not bool(finite):
                where = step + (bad[0] + 1 if bad else length)
                what = (f"the loss became {float(loss[bad[0]])}" if bad
                        else "a parameter became NaN/Inf")
                grads = _describe_counts(bad_grads, names)
                if grads:
                    what += f" (non-finite gradients zeroed: {grads})"
                if retries < config.max_retries:
                    retries += 1
                    lr_scale *= config.retry_lr_factor
                    history["rollbacks"].append({"step": where, "from": step, "reason": what,
                                                 "lr_scale": lr_scale})
                    reporter.message(f"step {where}: {what}; rolled back to step {step}, "
                                     f"retrying with learning rates x{lr_scale:g} "
                                     f"(retry {retries} of {config.max_retries})")
                    continue
                last = latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
                kept = f"; the last good checkpoint is {last}" if last else ""
                raise TrainingDiverged(
                    f"training stopped at step {where}: {what}, after {retries} retries from "
                    f"step {step} at smaller learning rates (down to x{lr_scale:g}){kept}. "
                    "Try lower learning rates or check the input image.",
                    step=where, good_step=step, params=params, history=history)
            if retries:
                reporter.message(f"steps {step}-{step + length} passed at learning rates "
                                 f"x{lr_scale:g}; back to x1")
            retries, lr_scale = 0, 1.0
            if any(bad_grads):
                history["nonfinite_grads"].append(
                    {"from": step, "to": step + length, **dict(zip(names, bad_grads))})
                reporter.message(f"steps {step}-{step + length}: non-finite gradients zeroed "
                                 f"for {_describe_counts(bad_grads, names)} (Gaussian-steps)")
            params, opt_state = new_params, new_state
            first = first or (length, elapsed)
            session_steps += length
            session_seconds += elapsed
            history["train_seconds"] += elapsed
            step += length
            if relocates_at(step, config.relocate_every, qat_start):
                params, opt_state, moved = relocate(
                    params, opt_state, img, jax.random.fold_in(jax.random.PRNGKey(0), step),
                    rendered=render(params, h, w, backend=config.backend))
                history["relocated"].append({"step": step, "moved": moved})
                if moved:
                    reporter.message(f"step {step}: {moved} invisible Gaussian"
                                     f"{'s' if moved > 1 else ''} relocated to where the "
                                     "error is")
            if step == config.steps and spec is not None:
                # The colours' grid, for the exact budget, and every attribute on the file's grid.
                spec, info = quantizer.finish(params, spec)
                if hasattr(quantizer, "round"):
                    params, spec, rounding = quantizer.round(params, spec)
                    info = {**dict(info), **dict(rounding)}
                else:
                    params = nearest_round(params, grid(spec.check()), h, w)
                history["quant"] = spec.record()
                history["quant_info"] = {**(history["quant_info"] or {}), **dict(info)}
            history["step"].append(step)
            history["loss"].append(float(loss.mean()))
            history["train_psnr"].append(_psnr_from_mse(float(mse[-1])))
            history["seconds"].append(history["train_seconds"])
            extra = ""
            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                rendered = render(params, h, w, backend=config.backend)
                ev = {"step": step, "psnr": metrics.psnr(rendered, img),
                      "ssim": metrics.ssim(rendered, img)}
                history["eval"].append(ev)
                extra = f"| eval psnr {ev['psnr']:.2f} ssim {ev['ssim']:.4f}"
            saved = None
            if ckpt_dir is not None and ((config.checkpoint_every
                                          and step % config.checkpoint_every == 0)
                                         or step == config.steps):
                saved = checkpoint(step)
            reporter.update(step, history["loss"][-1], history["train_psnr"][-1], extra)
            if stops is not None and stops.signum is not None and step < config.steps:
                if ckpt_dir is not None and saved is None:
                    saved = checkpoint(step)
                name = signal.Signals(stops.signum).name
                where = (f"checkpoint {saved}; rerun the same command to resume" if saved
                         else "no checkpoint (no workdir)")
                raise TrainingInterrupted(f"{name} at step {step}: {where}", step=step,
                                          checkpoint=saved, signum=stops.signum)
    if first is not None and session_steps > first[0]:
        # The first chunk's time beyond what the later chunks' rate predicts for it.
        per_step = (session_seconds - first[1]) / (session_steps - first[0])
        history["compile_seconds"] = max(0.0, first[1] - per_step * first[0])
    return params, history


def _mesh(config: FitConfig, loss_fn, blend: bool = False):
    """The R x C block mesh of `config.devices` (D: D x 1 bands; `train.sharded`), None for
    one device; ValueError for more devices than there are, a custom loss (the blocks
    compute the config's loss) or blended Gaussians (the blocks render sums)."""
    from smartsplat_jax.train.sharded import block_mesh, mesh_devices, mesh_shape

    if mesh_shape(config.devices) == (1, 1):
        return None
    if blend:
        raise ValueError(f"devices={config.devices}: blended Gaussians (method 3dgs) train on "
                         "one device only (the sharded loss renders sums); use devices=1")
    devices = mesh_devices(config.devices)
    if loss_fn is not None:
        raise ValueError(f"loss_fn={_name(loss_fn)} cannot be split over devices={config.devices}"
                         " (the blocks compute the config's loss); use devices=1")
    return block_mesh(devices, mesh_shape(config.devices))


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _check_custom(loss_fn, optimizer, image) -> None:
    """ValueError/TypeError naming a custom loss or optimizer that `fit` cannot use."""
    if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                      and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer={optimizer!r} must be an optax GradientTransformation "
                        "(with init and update), or None for the config's optimizer")
    if loss_fn is None:
        return
    if not callable(loss_fn):
        raise TypeError(f"loss_fn={loss_fn!r} must be a function (rendered, image) -> scalar, "
                        "or None for the config's loss")
    try:
        hash(loss_fn)
    except TypeError:
        raise TypeError(f"loss_fn={loss_fn!r} must be hashable (it is compiled into the "
                        "training step); pass a function, not an unhashable object") from None
    spec = jax.ShapeDtypeStruct(image.shape, jnp.float32)
    try:
        out = jax.eval_shape(loss_fn, spec, spec)
    except Exception as e:  # noqa: BLE001  the user's function, any error
        raise ValueError(f"loss_fn={_name(loss_fn)} fails on ([H, W, 3], [H, W, 3]) float32 "
                         f"arrays: {type(e).__name__}: {e}") from None
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"loss_fn={_name(loss_fn)} must return a float scalar; it returned "
                         f"{getattr(out, 'shape', out)} {getattr(out, 'dtype', '')}")


def _describe_counts(counts, names) -> str:
    return ", ".join(f"{name} {c}" for name, c in zip(names, counts) if c)
