"""Training configuration (SPEC §5, §6, §10) and the per-method defaults."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["METHODS", "FitConfig", "config_for_method"]

METHODS = ("smartsplat", "random", "gaussianimage-rs")
LOSSES = ("smartsplat", "l2")
OPTIMIZERS = ("adam", "adan")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to train Gaussians on an image.

    Attributes:
      steps: total optimizer steps (the paper: 50,000).
      loss: "smartsplat" (lambda_l1 * L1 + (1 - lambda_l1) * (1 - SSIM)) or "l2".
      lambda_l1: L1 weight of the SmartSplat loss, in [0, 1] (paper 0.9; authors' code 0.8).
      optimizer: "adam" (beta 0.9, 0.999, eps 1e-15) or "adan" (optax defaults).
      lr_means, lr_scales, lr_colors, lr_rotation, lr_opacity: learning rates per group
        (means in normalized units, scales in pixels); 0 freezes a group (opacity: 0).
      lr_halve_every: halve every rate each this many steps (0: constant).
      backend: renderer backend ("auto", "xla", "pallas", "reference").
      chunk_steps: steps per compiled lax.scan chunk (no host round trip inside a chunk).
      eval_every: evaluate PSNR/SSIM of the float render every this many steps (0: never).
      checkpoint_every: write a checkpoint every this many steps (0: only at the end).
      quant: a `codec.QuantSpec` for quantization-aware training: the loss sees the render of
        the quantized parameters (straight-through gradients). None trains in float.
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
    quant: object = None

    def validate(self) -> "FitConfig":
        """Raises ValueError naming the field, its value and the accepted range."""
        def positive_int(name, allow_zero=False):
            v = getattr(self, name)
            lo = 0 if allow_zero else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}={v!r} must be an integer >= {lo}")

        positive_int("steps")
        positive_int("chunk_steps")
        for name in ("eval_every", "checkpoint_every", "lr_halve_every"):
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
        from smartsplat_jax.codec.quantize import QuantSpec
        from smartsplat_jax.render import BACKENDS

        if self.quant is not None:
            if not isinstance(self.quant, QuantSpec):
                raise ValueError(f"quant={self.quant!r} must be a codec.QuantSpec or None")
            self.quant.check()

        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        return self


def config_for_method(method: str, **overrides) -> FitConfig:
    """The training configuration of a method (SPEC §6, §10), with overrides.

    smartsplat / random: SmartSplat's loss and Adam with per-group rates (they differ only in
    the initialization). gaussianimage-rs: L2 loss, Adan with rate 1e-3 for every group,
    halved every 20,000 steps, as the authors ran GaussianImage.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
    base = {}
    if method == "gaussianimage-rs":
        base = dict(loss="l2", optimizer="adan", lr_means=1e-3, lr_scales=1e-3, lr_colors=1e-3,
                    lr_rotation=1e-3, lr_opacity=0.0, lr_halve_every=20_000)
    base.update(overrides)
    return FitConfig(**base).validate()
