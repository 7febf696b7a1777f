"""Rate control: the most precise quantizer whose file fits a byte budget.

A target compression ratio CR allows floor(3 H W / CR) bytes. `LADDER` lists bit depths from
the most to the least precise; `fit_budget` encodes with each in turn and keeps the first file
that fits. Angle precision matters least (7 bits cost ~0.04 dB on photos), positions and
colours most, so the ladder spends bits on those first.
"""

from __future__ import annotations

import math

from smartsplat_jax import params as P
from smartsplat_jax.codec.format import encode
from smartsplat_jax.codec.quantize import QuantSpec, choose_spec

__all__ = ["LADDER", "byte_budget", "fit_budget", "rung_of", "spec_for_budget"]

# (pos_frac_bits, scale_bits, angle_bits, color_bits), most precise first.
LADDER = (
    (3, 8, 7, 9),
    (3, 8, 7, 8),
    (2, 8, 7, 8),
    (2, 7, 7, 7),
    (1, 7, 6, 7),
    (1, 6, 6, 6),
    (0, 5, 5, 5),
)


def byte_budget(height: int, width: int, cr: float) -> int:
    """floor(3 H W / CR): the largest file, in bytes, that honours compression ratio `cr`."""
    height, width = P._check_size(height, width)
    if not (isinstance(cr, (int, float)) and math.isfinite(cr) and cr > 0):
        raise ValueError(f"cr={cr!r} must be a finite number > 0")
    return int(3 * height * width // cr)


def _spec(params, height, width, rung) -> QuantSpec:
    pfb, sb, ab, cb = rung
    return choose_spec(params, height, width, pos_frac_bits=pfb, scale_bits=sb, angle_bits=ab,
                       color_bits=cb)


def fit_budget(params: P.GaussianParams, height: int, width: int, max_bytes: int | None, *,
               start: int = 0, ranges_from: QuantSpec | None = None) -> tuple[QuantSpec, bytes, bool]:
    """Encodes `params` with the first LADDER rung (from `start`) whose file has <= max_bytes.

    Args:
      params: N Gaussians fitted at height x width px.
      max_bytes: the byte budget; None takes the first rung.
      start: first rung to try.
      ranges_from: reuse this spec's ranges (only the bit depths change), e.g. the spec a
        quantization-aware fine-tuning used.

    Returns:
      (spec, data, fits): the spec used, the file's bytes, and whether it fits the budget.
      When no rung fits, the last rung's (smallest) file is returned with fits=False.
    """
    data = spec = None
    for rung in LADDER[start:]:
        if ranges_from is not None:
            pfb, sb, ab, cb = rung
            spec = ranges_from.with_bits(pos_frac_bits=pfb, scale_bits=sb, angle_bits=ab,
                                         color_bits=cb)
        else:
            spec = _spec(params, height, width, rung)
        data = encode(params, height, width, spec=spec)
        if max_bytes is None or len(data) <= max_bytes:
            return spec, data, True
    return spec, data, False


def rung_of(spec: QuantSpec) -> int:
    """The LADDER index of a spec's bit depths (ValueError if they are not a rung)."""
    return LADDER.index((spec.pos_frac_bits, spec.scale_bits, spec.angle_bits, spec.color_bits))


def spec_for_budget(params: P.GaussianParams, height: int, width: int,
                    max_bytes: int | None) -> tuple[int, QuantSpec]:
    """(rung index, spec) of the first LADDER rung whose encoding of `params` fits."""
    spec, _, _ = fit_budget(params, height, width, max_bytes)
    return rung_of(spec), spec
