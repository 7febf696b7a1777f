"""Quantization-aware fine-tuning: recover most of what quantizing the parameters costs.

Training all attributes through a straight-through quantizer at once (the textbook approach)
made things worse here: measured on Kodak kodim23 at CR 20, every fine-tuning step through the
rounding moved many parameters across rounding boundaries, and the PSNR of the quantized
render dropped by a further 0.4-1 dB. Freezing attributes in stages works instead:

  1. positions are snapped to their quantization grid and frozen; scales, angles and colours
     train in float for half the steps, compensating for the moved centres;
  2. scales and angles are snapped and frozen too; colours train for the other half;
  3. colours are rounded by the encoder.

On kodim23 (CR 20, 1,000 steps, 1/8 px positions) this took the quantization loss from
0.70 dB (rounding alone) to 0.31 dB after 2 x 50 steps.
"""

from __future__ import annotations

import dataclasses

from smartsplat_jax import params as P
from smartsplat_jax.codec.quantize import QuantSpec, dequantize, quantize
from smartsplat_jax.train.config import FitConfig
from smartsplat_jax.train.loop import fit

__all__ = ["quantization_finetune"]


def quantization_finetune(image, params: P.GaussianParams, spec: QuantSpec, config: FitConfig,
                          steps: int, *, progress: bool = False) -> tuple[P.GaussianParams, dict]:
    """Fine-tunes `params` for quantization with `spec` in two frozen stages (module doc).

    Args:
      image: [H, W, 3] float target in [0, 1].
      params: trained float parameters (N rows).
      spec: the quantizer the file will use.
      config: the training config (its rates are reused; steps, quant and checkpointing are
        replaced).
      steps: total fine-tuning steps, split between the two stages (0 returns params as is).

    Returns:
      (params, info): parameters whose positions, scales and angles lie on the quantization
      grid, and {"steps", "seconds"}.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"qat_steps={steps!r} must be an integer >= 0")
    if steps == 0:
        return params, {"steps": 0, "seconds": 0.0}
    h, w = int(image.shape[0]), int(image.shape[1])
    first = max(1, steps // 2)
    second = steps - first
    q = dequantize(quantize(params, spec, h, w), spec, h, w)
    params = params.replace(means=q.means)
    stage = dataclasses.replace(config, steps=first, lr_means=0.0, quant=None, eval_every=0,
                                checkpoint_every=0, chunk_steps=min(config.chunk_steps, first))
    params, hist1 = fit(image, params, stage, progress=progress)
    q = dequantize(quantize(params, spec, h, w), spec, h, w)
    params = params.replace(means=q.means, scales=q.scales, rotation=q.rotation)
    seconds = hist1["train_seconds"]
    if second:
        stage = dataclasses.replace(stage, steps=second, lr_scales=0.0, lr_rotation=0.0,
                                    chunk_steps=min(config.chunk_steps, second))
        params, hist2 = fit(image, params, stage, progress=progress)
        seconds += hist2["train_seconds"]
    return params, {"steps": steps, "seconds": seconds}
