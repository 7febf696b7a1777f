"""Training configuration (SPEC §5, §6, §10) and the per-method defaults."""

from __future__ import annotations

import dataclasses
import math

from smartsplat_jax.codec.prune import MAX_MSE

__all__ = ["METHODS", "RELOCATABLE_METHODS", "FitConfig", "config_for_method",
           "default_qat_steps", "default_qat_stages", "default_relocate_every",
           "default_lr_means", "default_lr_scales", "user_training", "MEANS_PX_PER_STEP",
           "SCALES_PX_PER_STEP"]

METHODS = ("smartsplat", "random", "gaussianimage-rs", "gaussianimage-cholesky", "lig",
           "imagegs", "3dgs")
# The methods whose Gaussians are an additive set of GaussianParams, the only kind
# `train.relocate` moves (`relocate_every`; a test checks it against each method's init).
RELOCATABLE_METHODS = ("smartsplat", "random", "gaussianimage-rs", "imagegs")
LOSSES = ("smartsplat", "l2")
OPTIMIZERS = ("adam", "adan")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to train Gaussians on an image.

    Attributes:
      steps: total optimizer steps (the paper: 50,000).
      loss: "smartsplat" (lambda_l1 * L1 + (1 - lambda_l1) * (1 - SSIM)) or "l2".
      lambda_l1: L1 weight of the SmartSplat loss, in [0, 1] (paper 0.9; authors' code 0.8).
      optimizer: "adam" (beta 0.9, 0.999, eps 1e-15) or "adan" (GaussianImage's Adan: betas
        0.98, 0.92, 0.99, eps 1e-8 outside the root; `train.optim.adan`).
      lr_means, lr_scales, lr_colors, lr_rotation, lr_opacity: learning rates per group
        (means in normalized units, for method lig in pixels: `train.lig`; scales in
        pixels); 0 freezes a group (opacity: 0).
      lr_halve_every: halve every rate each this many steps (0: constant).
      backend: renderer backend ("auto", "xla", "pallas", "reference").
      chunk_steps: steps per compiled lax.scan chunk (no host round trip inside a chunk).
      eval_every: evaluate PSNR/SSIM of the float render every this many steps (0: never).
      checkpoint_every: write a checkpoint every this many steps (0: only at the end).
      qat_steps: the last qat_steps of the `steps` are quantization-aware: the attributes are
        moved onto the file's quantization grid and frozen group by group (positions first,
        then scales and angles half-way, colours after the last update) while the rest keep
        training, and every update is projected into the quantizer's range (`train.loop`).
        Used when `fit` is given a quantizer; None: `default_qat_steps(steps)`.
      qat_stages: each group (positions, then scales and angles) reaches the grid in this
        many stages of randomly chosen Gaussians within its half of the phase, so that the
        Gaussians still free compensate those already snapped (`train.loop.qat_schedule`);
        None: `default_qat_stages(qat_steps_used)`.
      qat_lr_scale: factor on every learning rate during the quantization-aware steps.
      relocate_every: every this many steps of the float phase (while a whole interval of it
        is left), the Gaussians training has made invisible are moved to where the render's
        error is (`train.relocate`; additive `GaussianParams` only). 0: never, the paper's
        method.
      prune_mse: at the start of the quantization-aware phase, the Gaussians of an additive
        set whose removal moves the render by a mean squared amount of at most this much (a
        bound) get colour 0 and stay frozen; the file leaves them out and spends their bytes
        on the rest (`codec.prune`; default `codec.prune.MAX_MSE`). 0: none.
      color_bounds: (lo, hi): after every update the colours are projected into this RGB box,
        so that none drifts beyond what the codec stores (`codec.quantize.COLOR_BOX`, which
        it must lie within); None: no projection.
      max_retries: a chunk whose loss or parameters become non-finite is rolled back and run
        again at smaller learning rates up to this many times in a row before training
        stops with `TrainingDiverged` (0: stop at once).
      retry_lr_factor: each retry multiplies every learning rate by this factor, in (0, 1).
      devices: train on this many devices (the first of `jax.devices()`), the image cut
        into one band of rows per device, or on an (R, C) mesh of R x C devices, the image
        cut into R x C blocks (`train.sharded`; the xla rasterizer; the loss and its
        gradients equal one device's up to float rounding). 1: one device.
    """

    steps: int = 50_000
    loss: str = "smartsplat"
    lambda_l1: float = 0.9
    optimizer: str = "adam"
    lr_means: float = 1e-4
    lr_scales: float = 5e-2
    lr_colors: float = 5e-3
    lr_rotation: float = 1e-3
    lr_opacity: float = 0.0
    lr_halve_every: int = 0
    backend: str = "auto"
    chunk_steps: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    qat_steps: int | None = None
    qat_stages: int | None = None
    qat_lr_scale: float = 1.0
    prune_mse: float = MAX_MSE
    relocate_every: int = 0
    color_bounds: tuple[float, float] | None = (-1.0, 2.0)
    max_retries: int = 3
    retry_lr_factor: float = 0.25
    devices: int | tuple[int, int] = 1

    @property
    def qat_steps_used(self) -> int:
        """The quantization-aware steps (qat_steps, or its default), at most `steps`."""
        q = default_qat_steps(self.steps) if self.qat_steps is None else self.qat_steps
        return min(q, self.steps)

    @property
    def qat_stages_used(self) -> int:
        """The snapping stages per group (qat_stages, or its default), at most one per step of
        a group's half of the phase."""
        q = self.qat_steps_used
        k = default_qat_stages(q) if self.qat_stages is None else self.qat_stages
        return max(1, min(k, q // 2))

    def validate(self) -> "FitConfig":
        """Raises ValueError naming the field, its value and the accepted range."""
        def positive_int(name, allow_zero=False):
            v = getattr(self, name)
            lo = 0 if allow_zero else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}={v!r} must be an integer >= {lo}")

        positive_int("steps")
        positive_int("chunk_steps")
        d = self.devices
        if isinstance(d, tuple):
            if (len(d) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                   for v in d)):
                raise ValueError(f"devices={d!r} must be an integer >= 1 or a tuple of two "
                                 "integers >= 1 (rows, columns)")
        else:
            positive_int("devices")
        for name in ("eval_every", "checkpoint_every", "lr_halve_every", "max_retries",
                     "relocate_every"):
            positive_int(name, allow_zero=True)
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} must be one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.lambda_l1 <= 1.0:
            raise ValueError(f"lambda_l1={self.lambda_l1} must be in [0, 1]")
        for name in ("lr_means", "lr_scales", "lr_colors", "lr_rotation", "lr_opacity"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        from smartsplat_jax.codec.quantize import COLOR_BOX
        from smartsplat_jax.render import BACKENDS

        if self.qat_steps is not None:
            positive_int("qat_steps", allow_zero=True)
        if self.qat_stages is not None:
            positive_int("qat_stages")
        v = self.retry_lr_factor
        if not (isinstance(v, (int, float)) and 0 < v < 1):
            raise ValueError(f"retry_lr_factor={v!r} must be a number in (0, 1)")
        v = self.prune_mse
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)
                                       and v >= 0):
            raise ValueError(f"prune_mse={v!r} must be a finite number >= 0 (0: prune nothing)")
        v = self.qat_lr_scale
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"qat_lr_scale={v!r} must be a finite number > 0")
        b = self.color_bounds
        if b is not None:
            ok = (isinstance(b, (tuple, list)) and len(b) == 2
                  and all(isinstance(x, (int, float)) and math.isfinite(x) for x in b))
            if not ok or not COLOR_BOX[0] <= b[0] < b[1] <= COLOR_BOX[1]:
                raise ValueError(f"color_bounds={b!r} must be (lo, hi) with {COLOR_BOX[0]} <= lo "
                                 f"< hi <= {COLOR_BOX[1]}, or None")

        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        return self


def default_qat_steps(steps: int) -> int:
    """The default quantization-aware steps: 2 % of `steps`, at least 20 and at most 1,000,
    and at most half of a short run.

    Measured (see `train.loop`): the phase's gain saturates within tens of steps, while every
    step with frozen geometry is a step of training lost when the run has not converged."""
    return max(1, min(max(20, steps // 50), 1000, steps // 2))


def default_qat_stages(qat_steps: int) -> int:
    """The default snapping stages per group: one per 50 steps of its half of the phase, 1 to
    4 (so that every stage is followed by tens of steps in which the rest adapt).

    Measured (CPU, SmartSplat at CR 50, 20,000 steps resumed from the same step-19,500
    checkpoint, decoded PSNR with one stage -> four in the 400-step phase): 256^2 crops of
    camp 39.69 -> 39.79 dB and CLIC2020_5 31.03 -> 31.05 dB, a 384^2 telephone crop 35.18 ->
    35.21 dB, a 128^2 satellite crop 36.38 -> 36.39 dB. A 200-step phase in two stages
    (another random split): camp 39.69 -> 39.76, satellite 36.36 -> 36.38 dB. A 20-step phase
    (a 1,000-step run) in four stages of 2-3 steps lost 0.04 dB on the demo photo, hence one
    stage there.
    """
    return max(1, min(4, (qat_steps // 2) // 50))


def default_relocate_every(method: str, steps: int) -> int:
    """The relocation interval the user-facing front-ends train with when none is given
    (`smartsplat compress`, `experiments.fit`'s default configuration, the quickstart
    notebook): for SmartSplat, min(500, steps // 4) in runs of at least 400 steps, else 0.
    `FitConfig`, `config_for_method`, the paper configuration and the method comparisons
    (`experiments.benchmark`, `experiments.bench_codec`) keep 0, the paper's training, and
    the baselines train as published.

    A run needs a few tens of steps for Gaussians to die and a whole interval of float
    training after each relocation (`train.relocate.relocates_at`), hence steps // 4 in short
    runs. Measured, decoded file at equal bytes, without -> with (CPU, `experiments.fit` and
    `experiments.bench_codec`): six Kodak photos at CR 20, 1,000 steps, every 250: +0.19 to
    +0.70 dB (mean 27.19 -> 27.68 dB; SSIM and MS-SSIM up on all six); 256^2 crops at CR 50,
    4,000 and 20,000 steps, every 500: +0.29 to +2.26 dB; six hires photos at 512 px, CR 200,
    10,000 steps, every 500 (0-20 of 374 Gaussians invisible): -0.20 to +0.34 dB, +0.04 dB on
    average.
    """
    if method != "smartsplat" or steps < 400:
        return 0
    return min(500, steps // 4)


# The position rate of the user-facing front-ends (`default_lr_means`), in pixels per step
# along the image's longer side.
MEANS_PX_PER_STEP = 0.3


def default_lr_means(method: str, height: int, width: int) -> float:
    """The means' learning rate (normalized units per step) the user-facing front-ends train
    with when none is given: for SmartSplat, the larger of the paper's 1e-4 and
    `MEANS_PX_PER_STEP` pixels per step along the longer side, 2 * 0.3 / max(H, W) (so above
    the paper's rate in images under 6,000 px, the paper's at and above); the method's own
    rate for the others. `FitConfig`, `config_for_method`, the paper configuration and the
    method comparisons keep the paper's rate.

    Why pixels: the paper's rate is in normalized units (SPEC §6), so a step moves a Gaussian
    0.5 * W * 1e-4 px: 0.8 px in a 16K image, 0.013 px in a 256 px one, while the spacing
    of the Gaussians, sqrt(7 CR / 3) px, does not depend on the image's size. Small images
    then train their positions hundreds of times slower, relative to the Gaussians, than
    the images the rate was chosen for. Measured (CPU, decoded file at equal bytes, with
    relocation): 256^2 crops of two photos at CR 50, 4,000 steps, 1e-4 -> 2.4e-3: camp
    40.74 -> 41.03 dB, CLIC2020_5 30.25 -> 31.70 dB (20,000 steps: 31.73 -> 31.81 dB);
    CLIC2020_5 at 682 x 1024, CR 200, 4,000 steps, 1e-4 -> 5e-4: 29.48 -> 29.59 dB; the demo
    photo (768 x 512) at CR 20, 1,000 steps, 1e-4 -> 1e-3: 38.57 -> 39.45 dB (3e-3: 39.20).
    The gain is mostly speed: short runs get where long ones go.
    """
    paper = config_for_method(method).lr_means
    if method != "smartsplat":
        return paper
    return max(paper, 2.0 * MEANS_PX_PER_STEP / max(height, width))


# The scales' rate of the user-facing front-ends (`default_lr_scales`), in pixels per step.
SCALES_PX_PER_STEP = 0.1


def default_lr_scales(method: str) -> float:
    """The scales' learning rate (pixels per step: the scales are standard deviations in
    pixels, SPEC §6) the user-facing front-ends train with when none is given: for
    SmartSplat `SCALES_PX_PER_STEP`, twice the paper's 5e-2; the method's own rate for the
    others. `FitConfig`, `config_for_method`, the paper configuration and the method
    comparisons keep the paper's rate.

    Why: the front-ends run 1,000 to 20,000 steps, not the paper's 50,000, and the scales
    then lag behind the positions that `default_lr_means` moves. Measured (CPU, decoded file
    at equal bytes, with relocation and the front-ends' position rate, 5e-2 -> 0.1): 256^2
    crops at CR 50, 4,000 steps: camp 41.04 -> 41.33 dB, CLIC2020_5 31.64 -> 31.78 dB
    (0.025: 31.51, 0.2: 31.69), and at 20,000 steps 31.75 -> 31.83 dB; CLIC2020_5 at
    682 x 1024, CR 200, 4,000 steps: 29.53 -> 29.66 dB; the demo photo at
    CR 20, 1,000 steps: 39.41 -> 39.54 dB; six Kodak photos at CR 20, 1,000 steps: mean
    28.19 -> 28.33 dB (each -0.02 to +0.33; SSIM up on all six).
    """
    if method != "smartsplat":
        return config_for_method(method).lr_scales
    return SCALES_PX_PER_STEP


def user_training(method: str, steps: int, height: int, width: int) -> dict:
    """The FitConfig overrides the user-facing front-ends (`smartsplat compress`,
    `experiments.fit`'s default configuration, the quickstart notebook) train a `method` run
    of `steps` on an H x W image with, where the user gave none: relocation
    (`default_relocate_every`), the position rate (`default_lr_means`) and the scales' rate
    (`default_lr_scales`). Without them, `config_for_method` is the paper's training
    (SPEC §6), which the paper configuration and the method comparisons use."""
    return {"relocate_every": default_relocate_every(method, steps),
            "lr_means": default_lr_means(method, height, width),
            "lr_scales": default_lr_scales(method)}


def config_for_method(method: str, **overrides) -> FitConfig:
    """The training configuration of a method (SPEC §6, §10), with overrides.

    smartsplat / random: SmartSplat's loss and Adam with per-group rates (they differ only in
    the initialization). gaussianimage-rs and gaussianimage-cholesky: L2 loss, Adan with
    rate 1e-3 for every group, halved every 20,000 steps, as the authors ran GaussianImage
    (`train.py`, `optimizer.py`; the Cholesky factor takes lr_scales). lig: L2 loss, Adam
    at 0.018 for every group, constant, as LIG's `train.py`; its lr_means is in pixels per
    step (`train.lig` converts it at each level's size). imagegs: gaussianimage-rs's
    (`train.imagegs` adds Image-GS's init and progressive addition). 3dgs: GaussianImage's
    3DGS baseline (`train.gs3d`): 0.7 L1 + 0.3 (1 - SSIM), Adan at 1e-3 for every group but
    the means (1e-3 / 8, its world rate at the camera's depth 8) and opacity trained, halved
    every 20,000 steps; colours kept >= 0 (its max(SH + 0.5, 0)) and below the codec's box.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    base = {}
    if method in ("gaussianimage-rs", "gaussianimage-cholesky", "imagegs"):
        base = dict(loss="l2", optimizer="adan", lr_means=1e-3, lr_scales=1e-3, lr_colors=1e-3,
                    lr_rotation=1e-3, lr_opacity=0.0, lr_halve_every=20_000)
    elif method == "3dgs":  # GaussianImage's train.py and gaussiansplatting_3d.py (train.gs3d)
        from smartsplat_jax.codec.quantize import COLOR_BOX

        base = dict(loss="smartsplat", lambda_l1=0.7, optimizer="adan", lr_means=1e-3 / 8,
                    lr_scales=1e-3, lr_colors=1e-3, lr_rotation=1e-3, lr_opacity=1e-3,
                    lr_halve_every=20_000, color_bounds=(0.0, COLOR_BOX[1]))
    elif method == "lig":  # LIG's train.py: Adam at 0.018 for everything (see train.lig)
        base = dict(loss="l2", optimizer="adam", lr_means=0.018, lr_scales=0.018,
                    lr_colors=0.018, lr_rotation=0.018, lr_opacity=0.0, lr_halve_every=0)
    base.update(overrides)
    return FitConfig(**base).validate()
