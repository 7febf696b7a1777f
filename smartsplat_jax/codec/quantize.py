"""Quantization of Gaussian parameters to integer codes, and back (the codec's lossy step).

Every attribute is mapped to an unsigned integer code with a documented bit depth:

  * position: pixel coordinates (x, y) on a grid of 2**-pos_frac_bits px (default 1/4 px),
    clamped to the box x in [-W, 2W], y in [-H, 2H] px (a Gaussian further out than one image
    size is kept but moved to the box edge). Codes are integers relative to an origin.
  * scales: both standard deviations on a log2 grid between 2**scale_lo and 2**scale_hi px
    with 2**scale_bits - 1 levels; code 0 means exactly 0 px (an invisible axis). The range is
    the data's, limited to [2**-6 px, 4 * max(H, W) px]; smaller scales quantize to 0 and larger
    ones to the top.
  * angle: theta modulo pi (theta and theta + pi are the same Gaussian) on a uniform grid of
    2**angle_bits steps; decoded angles lie in [pi/2, 3pi/2) so the raw logit stays finite.
  * colours: each channel uniformly between its minimum and maximum (limited to [-16, 16])
    with 2**color_bits levels.
  * opacity: omitted (opacity_bits = 0) when every opacity is exactly 1, as SmartSplat trains
    it; otherwise uniform like a colour channel.

`choose_spec` picks the ranges from the data; `quantize` -> codes, `dequantize` -> params
(numpy, exact and deterministic: decoding a file reproduces the same float32 parameters).
`fake_quantize` is the same quantizer in jax with a straight-through gradient, for
quantization-aware fine-tuning.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P

__all__ = ["QuantSpec", "QUANT_LIMITS", "choose_spec", "quantize", "dequantize",
           "fake_quantize", "position_box", "code_bytes"]

# Documented ranges of every quantization parameter (the decoder rejects anything else).
QUANT_LIMITS = {
    "pos_frac_bits": (0, 8),
    "scale_bits": (2, 16),
    "angle_bits": (1, 16),
    "color_bits": (1, 16),
    "opacity_bits": (0, 16),
    "scale_log2": (-32.0, 32.0),
    "color": (-16.0, 16.0),
    "opacity": (-16.0, 16.0),
}
SCALE_LOG2_FLOOR = -6.0  # 1/64 px: smaller standard deviations are coded as 0
SCALE_MAX_FACTOR = 4.0  # scales above 4 * max(H, W) px are coded as that


def _f32(v: float) -> float:
    return float(np.float32(v))


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """Bit depths and ranges of the quantizer (hashable: usable as a static jit argument).

    Attributes:
      pos_frac_bits: position grid step 2**-pos_frac_bits px, in [0, 8].
      scale_bits, angle_bits, color_bits: bits per code, see QUANT_LIMITS.
      opacity_bits: 0 when all opacities are 1 (not stored), else bits per code.
      scale_lo, scale_hi: log2 of the smallest and largest non-zero coded scale (px).
      color_lo, color_hi: per-channel (R, G, B) range of the colour codes.
      opacity_lo, opacity_hi: range of the opacity codes (unused when opacity_bits = 0).
    All ranges are float32 values, so a file header reproduces them exactly.
    """

    pos_frac_bits: int = 2
    scale_bits: int = 8
    angle_bits: int = 8
    color_bits: int = 8
    opacity_bits: int = 0
    scale_lo: float = 0.0
    scale_hi: float = 0.0
    color_lo: tuple[float, float, float] = (0.0, 0.0, 0.0)
    color_hi: tuple[float, float, float] = (1.0, 1.0, 1.0)
    opacity_lo: float = 1.0
    opacity_hi: float = 1.0

    def check(self) -> "QuantSpec":
        """Raises ValueError naming a bit depth or range outside QUANT_LIMITS."""
        for name in ("pos_frac_bits", "scale_bits", "angle_bits", "color_bits", "opacity_bits"):
            v = getattr(self, name)
            lo, hi = QUANT_LIMITS[name]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be an integer in [{lo}, {hi}]")
        ranges = [("scale", self.scale_lo, self.scale_hi, "scale_log2")]
        ranges += [(f"color[{k}]", self.color_lo[k], self.color_hi[k], "color") for k in range(3)]
        if self.opacity_bits:
            ranges.append(("opacity", self.opacity_lo, self.opacity_hi, "opacity"))
        for name, lo, hi, key in ranges:
            a, b = QUANT_LIMITS[key]
            if not (math.isfinite(lo) and math.isfinite(hi) and a <= lo <= hi <= b):
                raise ValueError(f"{name} range [{lo}, {hi}] must satisfy {a} <= lo <= hi <= {b}")
        return self

    def with_bits(self, **bits) -> "QuantSpec":
        """A copy with other bit depths (same ranges)."""
        return dataclasses.replace(self, **bits).check()


def code_bytes(bits: int) -> int:
    """Bytes per stored code of `bits` bits (1 up to 8 bits, else 2)."""
    return 1 if bits <= 8 else 2


def position_box(height: int, width: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x_min, x_max), (y_min, y_max)) in px: positions are clamped to this box."""
    return (-float(width), 2.0 * width), (-float(height), 2.0 * height)


def choose_spec(params: P.GaussianParams, height: int, width: int, *, pos_frac_bits: int = 2,
                scale_bits: int = 8, angle_bits: int = 8, color_bits: int = 8,
                opacity_bits: int = 8) -> QuantSpec:
    """The quantizer for `params` (N rows, fitted at height x width px): data ranges, given bits.

    opacity_bits is used only when some opacity differs from 1; otherwise it becomes 0.
    """
    s = np.abs(np.asarray(params.scales, np.float64))
    pos = s[s > 0]
    cap = math.log2(SCALE_MAX_FACTOR * max(height, width))
    if pos.size:
        hi = min(float(np.log2(pos.max())), cap)
        lo = min(max(float(np.log2(pos.min())), SCALE_LOG2_FLOOR), hi)
    else:
        lo = hi = 0.0
    c = np.asarray(params.colors, np.float64).reshape(-1, 3)
    clo = np.clip(c.min(0) if c.size else np.zeros(3), *QUANT_LIMITS["color"])
    chi = np.clip(c.max(0) if c.size else np.zeros(3), *QUANT_LIMITS["color"])
    o = np.asarray(params.opacity, np.float64)
    if o.size == 0 or np.all(o == 1.0):
        opacity_bits, olo, ohi = 0, 1.0, 1.0
    else:
        olo, ohi = (float(np.clip(v, *QUANT_LIMITS["opacity"])) for v in (o.min(), o.max()))
    # float32 ranges; widen by one float32 ulp where rounding narrowed them.
    lo32, hi32 = _f32(lo), _f32(hi)
    return QuantSpec(
        pos_frac_bits=pos_frac_bits, scale_bits=scale_bits, angle_bits=angle_bits,
        color_bits=color_bits, opacity_bits=opacity_bits,
        scale_lo=lo32, scale_hi=max(hi32, lo32),
        color_lo=tuple(float(np.float32(v)) for v in clo),
        color_hi=tuple(float(max(np.float32(b), np.float32(a))) for a, b in zip(clo, chi)),
        opacity_lo=_f32(olo), opacity_hi=_f32(max(ohi, olo))).check()


def _scale_step(spec: QuantSpec) -> float:
    """log2 step between non-zero scale codes 1 .. 2**bits - 1 (0 for a one-value range)."""
    return (spec.scale_hi - spec.scale_lo) / ((1 << spec.scale_bits) - 2)


def _uniform_step(lo: float, hi: float, bits: int) -> float:
    """Step between uniform codes 0 .. 2**bits - 1 (0 for a one-value range)."""
    return (hi - lo) / ((1 << bits) - 1)


def _safe(step: float) -> float:
    """Divisor for quantizing: a one-value range maps everything to its value anyway."""
    return step if step > 0 else 1.0


def quantize(params: P.GaussianParams, spec: QuantSpec, height: int, width: int) -> dict:
    """Integer codes of every attribute, in the input's order.

    Returns:
      {"position": [N, 2] int64 grid coordinates (x, y) = round(px * 2**pos_frac_bits),
       "scales": [N, 2] uint32, "angle": [N] uint32, "colors": [N, 3] uint32,
       "opacity": [N] uint32 (absent when spec.opacity_bits = 0)}.
    """
    spec.check()
    unit = float(1 << spec.pos_frac_bits)
    xy = 0.5 * np.asarray([width, height], np.float64) * (np.asarray(params.means, np.float64) + 1.0)
    (x0, x1), (y0, y1) = position_box(height, width)
    xy = np.stack([np.clip(xy[:, 0], x0, x1), np.clip(xy[:, 1], y0, y1)], -1)
    position = np.round(np.nan_to_num(xy) * unit).astype(np.int64)

    s = np.abs(np.asarray(params.scales, np.float64))
    step = _scale_step(spec)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.log2(s) - spec.scale_lo) / _safe(step) + 1.0
    top = (1 << spec.scale_bits) - 1
    scales = np.where(t >= 0.5, np.clip(np.round(np.nan_to_num(t, posinf=top)), 1, top), 0)

    theta = np.asarray(P.rotation_angle(params.rotation), np.float64)[:, 0]
    u = np.mod(theta - 0.5 * np.pi, np.pi) / np.pi
    angle = np.mod(np.round(np.nan_to_num(u) * (1 << spec.angle_bits)), 1 << spec.angle_bits)

    c = np.asarray(params.colors, np.float64)
    colors = np.empty(c.shape, np.float64)
    for k in range(3):
        st = _uniform_step(spec.color_lo[k], spec.color_hi[k], spec.color_bits)
        colors[:, k] = np.round((np.nan_to_num(c[:, k]) - spec.color_lo[k]) / _safe(st))
    colors = np.clip(colors, 0, (1 << spec.color_bits) - 1)
    out = {"position": position, "scales": scales.astype(np.uint32),
           "angle": angle.astype(np.uint32), "colors": colors.astype(np.uint32)}
    if spec.opacity_bits:
        o = np.nan_to_num(np.asarray(params.opacity, np.float64)[:, 0])
        st = _uniform_step(spec.opacity_lo, spec.opacity_hi, spec.opacity_bits)
        out["opacity"] = np.clip(np.round((o - spec.opacity_lo) / _safe(st)), 0,
                                 (1 << spec.opacity_bits) - 1).astype(np.uint32)
    return out


def dequantize(codes: dict, spec: QuantSpec, height: int, width: int) -> P.GaussianParams:
    """Float32 raw parameters from `quantize`'s codes (exactly what a decoded file holds)."""
    unit = float(1 << spec.pos_frac_bits)
    xy = codes["position"].astype(np.float64) / unit
    means = np.stack([2.0 * xy[:, 0] / width - 1.0, 2.0 * xy[:, 1] / height - 1.0], -1)
    sc = codes["scales"].astype(np.float64)
    scales = np.where(sc > 0, np.exp2(spec.scale_lo + (sc - 1.0) * _scale_step(spec)), 0.0)
    theta = 0.5 * np.pi + codes["angle"].astype(np.float64) * (np.pi / (1 << spec.angle_bits))
    u = theta / (2.0 * np.pi)
    rotation = (np.log(u) - np.log1p(-u))[:, None]
    colors = np.empty(codes["colors"].shape, np.float64)
    for k in range(3):
        st = _uniform_step(spec.color_lo[k], spec.color_hi[k], spec.color_bits)
        colors[:, k] = spec.color_lo[k] + codes["colors"][:, k].astype(np.float64) * st
    n = means.shape[0]
    if spec.opacity_bits:
        st = _uniform_step(spec.opacity_lo, spec.opacity_hi, spec.opacity_bits)
        opacity = (spec.opacity_lo + codes["opacity"].astype(np.float64) * st)[:, None]
    else:
        opacity = np.ones((n, 1))
    f = np.float32
    return P.GaussianParams(means=jnp.asarray(means.astype(f)), scales=jnp.asarray(scales.astype(f)),
                            rotation=jnp.asarray(rotation.astype(f)),
                            colors=jnp.asarray(colors.astype(f)),
                            opacity=jnp.asarray(opacity.astype(f)))


def _ste(x: jax.Array, q: jax.Array) -> jax.Array:
    """q in the forward pass, identity gradient to x (straight-through estimator)."""
    return x + jax.lax.stop_gradient(q.astype(x.dtype) - x)


def fake_quantize(params: P.GaussianParams, spec: QuantSpec, height: int,
                  width: int) -> P.GaussianParams:
    """`dequantize(quantize(params))` in jax, with straight-through gradients (jittable).

    The forward values match the numpy quantizer up to float32 rounding; gradients pass
    through every rounding unchanged, so training sees the quantized render and still
    moves the continuous parameters.
    """
    dt = params.means.dtype
    unit = float(1 << spec.pos_frac_bits)
    (x0, x1), (y0, y1) = position_box(height, width)
    xy = P.normalized_to_pixel(params.means, height, width)
    lo = jnp.asarray([x0, y0], dt)
    hi = jnp.asarray([x1, y1], dt)
    xyq = jnp.round(jnp.clip(xy, lo, hi) * unit) / unit
    means = _ste(params.means, P.pixel_to_normalized(xyq, height, width))

    s = jnp.abs(params.scales)
    step = _scale_step(spec)
    top = (1 << spec.scale_bits) - 1
    t = (jnp.log2(jnp.maximum(s, 1e-30)) - spec.scale_lo) / _safe(step) + 1.0
    code = jnp.clip(jnp.round(t), 1, top)
    sq = jnp.where(t >= 0.5, jnp.exp2(spec.scale_lo + (code - 1.0) * step), 0.0)
    scales = _ste(params.scales, jnp.sign(params.scales) * sq)  # |.| keeps the sign's meaning

    theta = P.rotation_angle(params.rotation)
    levels = 1 << spec.angle_bits
    u = jnp.mod(theta - 0.5 * jnp.pi, jnp.pi) / jnp.pi
    a = jnp.mod(jnp.round(u * levels), levels)
    rotation = _ste(params.rotation, P.angle_to_raw(0.5 * jnp.pi + a * (jnp.pi / levels)))

    clo = jnp.asarray(spec.color_lo, dt)
    steps = [_uniform_step(a_, b_, spec.color_bits) for a_, b_ in zip(spec.color_lo, spec.color_hi)]
    cst = jnp.asarray(steps, dt)
    cq = jnp.clip(jnp.round((params.colors - clo) / jnp.asarray([_safe(v) for v in steps], dt)),
                  0, (1 << spec.color_bits) - 1)
    colors = _ste(params.colors, clo + cq * cst)

    opacity = params.opacity
    if spec.opacity_bits:
        st = _uniform_step(spec.opacity_lo, spec.opacity_hi, spec.opacity_bits)
        oq = jnp.clip(jnp.round((opacity - spec.opacity_lo) / _safe(st)), 0,
                      (1 << spec.opacity_bits) - 1)
        opacity = _ste(opacity, spec.opacity_lo + oq * st)
    else:
        opacity = _ste(opacity, jnp.ones_like(opacity))
    return P.GaussianParams(means=means, scales=scales, rotation=rotation, colors=colors,
                            opacity=opacity)
