"""The one quantizer: Gaussian parameters <-> integer codes, in jax, for the encoder, the decoder
and quantization-aware training alike.

A `QuantSpec` holds integers only (step exponents, range offsets, level counts), so a file
header stores it exactly. `grid(spec)` turns it, on the host, into a `Grid` of float32/int32
arrays; the jax functions take that grid as an argument, so inside a jitted training step it
is a traced value and a new quantizer never recompiles:

  codes  = quantize(params, g, H, W)      # jnp int32 codes: what a file stores
  params = dequantize(codes, g, H, W)     # float32 params: what the decoder renders
  fake_quantize(params, g, H, W)          # dequantize(quantize(.)) forward, identity gradient
  project(params, g, H, W)                # into the grid's range (after each QAT update)

The encoder (`format.encode`) calls `quantize`, the decoder calls `dequantize`, and training
(`train.loop`) calls `fake_quantize`, whose forward value is exactly `dequantize(quantize(.))`
(the straight-through form q + (x - stop_gradient(x)) adds an exact zero). So the render the
loss sees at the end of quantization-aware training is the render of the decoded file, up to
the order of the sum (the file stores the Gaussians in Morton order).

Steps are powers of 2**(1/8): step(e) = STEP_MANTISSA[e mod 8] * 2**(e div 8), exact float32
values computed on the host, identical on every machine.

The grid of every attribute (SPEC §2 parameters; §8: what the file stores):
  * position: the pixel centre (x, y) on a grid of pos_step px, inside the box
    x in [-W, 2W], y in [-H, 2H] px (farther Gaussians are moved to the box edge).
  * scales: in canonical order, the major axis first (when |s_y| > |s_x| the axes are swapped
    and the angle turned by pi/2, which is the same Gaussian). log2 of each standard deviation
    on a grid of scale_step: code k means log2(s) = (scale_lo + k) * scale_step, with
    k in [0, scale_levels). The range comes from the data, limited to
    [2**-6 px, 4 * max(H, W) px]. The file stores the major code and d = major - minor >= 0.
  * angle: theta modulo pi on a grid of pi / L(d): theta = pi/2 + a * pi / L. L depends on the
    anisotropy d (in scale steps): an isotropic Gaussian (d = 0) has no angle (L = 1); otherwise
    L is the even number of levels at which an angle step perturbs the covariance as much as
    a scale step (the relative perturbation of Sigma by a rotation delta is
    delta * (r - 1/r), r = s_major / s_minor; by a log2 scale step, 2 ln 2 * scale_step), times
    2**(angle_exp / 8), capped at MAX_ANGLE_LEVELS. `angle_levels_table` computes L(d) once on
    the host in float64, so encoder, decoder and training agree on it exactly.
  * colours: an orthonormal luma/chroma transform c' = M c (M = COLOR_BASIS; it preserves the
    squared error, so PSNR), each channel on a grid of color_step: code k of channel j means
    c'_j = (color_lo[j] + k) * color_step, k in [0, color_levels[j]).
  * opacity: omitted (opacity_levels = 0) when every opacity is exactly 1, as SmartSplat trains
    it; otherwise (opacity_lo + k) * opacity_step, k in [0, opacity_levels), the step chosen
    with the colours' by rate control (`codec.rate.opacity_for_budget`).

The step sizes, not the ranges, set the precision: a stray Gaussian with a far-off colour or
scale widens only the range (one rare code for the entropy coder), never the step of the
others. Ranges are limited to boxes (`COLOR_BOX` for colours, the scale limits above), and
values outside are clamped, so one outlier cannot even make the alphabet large.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P

__all__ = ["QuantSpec", "Grid", "Codes", "QUANT_LIMITS", "COLOR_BASIS", "COLOR_BOX",
           "MAX_ANGLE_LEVELS", "SCALE_LOG2_FLOOR", "step_value", "grid", "choose_spec",
           "quantize", "dequantize", "fake_quantize", "project", "position_box",
           "angle_levels_table", "canonical_colors"]

# float32 2**(k/8), k = 0..7: the mantissas of every step (exact, the same on every machine).
STEP_MANTISSA = np.asarray([2.0 ** (k / 8) for k in range(8)], np.float32)
SCALE_LOG2_FLOOR = math.log2(P.SCALE_FLOOR)  # -6: the renderers' scale floor, 1/64 px
SCALE_MAX_FACTOR = 4.0  # the largest coded standard deviation is 4 * max(H, W) px
MAX_ANGLE_LEVELS = 1 << 14
MAX_LEVELS = 1 << 16  # the largest alphabet of any code (and the length of the angle table)
# Colour ranges are limited to the RGB box [-16, 16]^3, taken to the luma/chroma basis.
# (Training keeps colours in a smaller box, `FitConfig.color_bounds`.)
COLOR_BOX = (-16.0, 16.0)
_S3, _S2, _S6 = math.sqrt(3.0), math.sqrt(2.0), math.sqrt(6.0)
COLOR_BASIS = np.asarray([[1 / _S3, 1 / _S3, 1 / _S3],
                          [1 / _S2, 0.0, -1 / _S2],
                          [1 / _S6, -2 / _S6, 1 / _S6]], np.float64)

# Documented ranges of every QuantSpec field (the decoder rejects anything else).
QUANT_LIMITS = {
    "pos_exp": (-64, 24),  # position step 2**-8 .. 8 px
    "scale_exp": (-96, 0),  # log2-scale step 2**-12 .. 1 octave
    "scale_lo": (-(1 << 20), 1 << 20),
    "scale_levels": (1, MAX_LEVELS),
    "angle_exp": (-64, 64),
    "color_exp": (-96, 0),  # colour step 2**-12 .. 1
    "color_lo": (-(1 << 20), 1 << 20),
    "color_levels": (1, MAX_LEVELS),
    "opacity_exp": (-96, 0),
    "opacity_lo": (-(1 << 20), 1 << 20),
    "opacity_levels": (0, MAX_LEVELS),
}


def step_value(e: int) -> float:
    """2**(e/8) as the exact float32 the quantizer uses (a Python float)."""
    return float(np.ldexp(STEP_MANTISSA[e % 8], e // 8))


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """The quantizer of one file: integers only (see the module docstring for the grids).

    Attributes:
      pos_exp: position step 2**(pos_exp/8) px.
      scale_exp: log2-scale step 2**(scale_exp/8) (octaves).
      scale_lo, scale_levels: scale code k means log2 s = (scale_lo + k) * scale step.
      angle_exp: angle precision factor 2**(angle_exp/8) on top of L(d) (0: as precise as
        the scale step).
      color_exp: colour step 2**(color_exp/8) in the luma/chroma basis.
      color_lo, color_levels: per channel (luma, chroma 1, chroma 2); code k means
        (color_lo[j] + k) * colour step.
      opacity_exp, opacity_lo, opacity_levels: the same for opacity; opacity_levels = 0:
        every opacity is 1 and none is stored.
    """

    pos_exp: int = -16
    scale_exp: int = -32
    scale_lo: int = 0
    scale_levels: int = 1
    angle_exp: int = 0
    color_exp: int = -64
    color_lo: tuple[int, int, int] = (0, 0, 0)
    color_levels: tuple[int, int, int] = (1, 1, 1)
    opacity_exp: int = -64
    opacity_lo: int = 0
    opacity_levels: int = 0

    def check(self) -> "QuantSpec":
        """Raises ValueError naming a field outside QUANT_LIMITS; returns self."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            lo, hi = QUANT_LIMITS[f.name]
            for x in (v if isinstance(v, tuple) else (v,)):
                if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not lo <= x <= hi:
                    raise ValueError(f"{f.name}={v!r} must be an integer in [{lo}, {hi}]"
                                     + (" (one per colour channel)" if isinstance(v, tuple) else ""))
            if isinstance(v, tuple) and len(v) != 3:
                raise ValueError(f"{f.name}={v!r} must have 3 entries")
        return self

    @property
    def pos_step(self) -> float:
        return step_value(self.pos_exp)

    @property
    def scale_step(self) -> float:
        return step_value(self.scale_exp)

    @property
    def color_step(self) -> float:
        return step_value(self.color_exp)

    def coarser(self, k: int = 1) -> "QuantSpec":
        """The same grids with every step 2**(k/8) times larger (ranges re-derived by the
        caller through `choose_spec`)."""
        return dataclasses.replace(self, pos_exp=self.pos_exp + k, scale_exp=self.scale_exp + k,
                                   color_exp=self.color_exp + k, opacity_exp=self.opacity_exp + k)

    def record(self) -> dict:
        """The spec as JSON holds it (tuples as lists), for histories and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_record(cls, d: dict) -> "QuantSpec":
        """The inverse of `record`, checked (ValueError on a bad spec)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}).check()

    def describe(self) -> str:
        """One line for people: the steps and alphabet sizes."""
        op = ("opacity 1" if not self.opacity_levels else
              f"opacity step {step_value(self.opacity_exp):.3g}")
        return (f"positions {self.pos_step:.4g} px, log2-scales {self.scale_step:.4g} "
                f"({self.scale_levels} levels), angles x{step_value(self.angle_exp):.3g}, "
                f"colours {self.color_step:.4g} ({'/'.join(map(str, self.color_levels))} levels), "
                + op)


class Grid(NamedTuple):
    """`QuantSpec` as arrays for the jax functions (a pytree: traced under jit).

    Attributes:
      pos_step: [] float32 px.
      scale_lo: [] int32, the grid index of scale code 0 (code k: log2 px =
        (scale_lo + k) * scale_step); scale_step: [] float32 octaves;
      scale_top: [] int32, the largest scale code.
      angle_levels: [MAX_LEVELS] int32, L(d) for d = 0 .. MAX_LEVELS - 1.
      color_lo: [3] int32, the grid index of colour code 0 (code k of channel j: luma/chroma
        value (color_lo[j] + k) * color_step); color_step: [] float32;
      color_top: [3] int32, the largest colour code per channel.
      opacity_lo: [] int32 (the same for the opacity); opacity_step: [] float32;
      opacity_top: [] int32 (-1: opacity not stored).

    The offsets are integers so that a value is one rounding of an exact integer,
    (lo + k) * step: the same float whatever the compiler fuses (a fused multiply-add of
    lo * step + k * step would not be), and exactly 0 where lo + k = 0 (a pruned Gaussian's
    colour, an opacity of 0).
    """

    pos_step: jax.Array
    scale_lo: jax.Array
    scale_step: jax.Array
    scale_top: jax.Array
    angle_levels: jax.Array
    color_lo: jax.Array
    color_step: jax.Array
    color_top: jax.Array
    opacity_lo: jax.Array
    opacity_step: jax.Array
    opacity_top: jax.Array


class Codes(NamedTuple):
    """Integer codes of N Gaussians (int32 arrays), in the params' order.

    Attributes:
      position: [N, 2] (x, y) grid coordinates, round(px / pos_step) (may be negative).
      scale: [N] code of the major axis; aniso: [N] major - minor code (>= 0).
      angle: [N] in [0, L(aniso)).
      color: [N, 3] luma/chroma codes, each in [0, color_levels[j]).
      opacity: [N] (all 0 when the spec stores no opacity).
    """

    position: jax.Array
    scale: jax.Array
    aniso: jax.Array
    angle: jax.Array
    color: jax.Array
    opacity: jax.Array


def angle_levels_table(spec: QuantSpec) -> np.ndarray:
    """[MAX_LEVELS] int32: L(d), the angle levels of a Gaussian d scale steps anisotropic.

    L(0) = 1 (no angle); L(d) = min(MAX_ANGLE_LEVELS, 2 * ceil(F(d) / 2)) with
    F(d) = 2**(angle_exp/8) * pi * (r - 1/r) / (2 ln 2 * scale_step), r = 2**(d * scale_step):
    the levels at which an angle step perturbs the covariance as much as a scale step.
    Computed in float64 on the host (so the encoder and decoder agree exactly); even so that
    swapping the axes (theta + pi/2) keeps a Gaussian on the grid.
    """
    ds = step_value(spec.scale_exp)
    d = np.arange(MAX_LEVELS, dtype=np.float64)
    log2r = np.minimum(d * ds, 60.0)
    f = step_value(spec.angle_exp) * math.pi * (np.exp2(log2r) - np.exp2(-log2r)) / (
        2.0 * math.log(2.0) * ds)
    levels = np.minimum(2.0 * np.ceil(np.minimum(f, MAX_ANGLE_LEVELS) / 2.0), MAX_ANGLE_LEVELS)
    levels = np.maximum(levels, 2.0)
    levels[0] = 1.0
    return levels.astype(np.int32)


def grid(spec: QuantSpec) -> Grid:
    """The arrays of `spec` for `quantize` / `dequantize` / `fake_quantize` / `project`.

    Built in numpy and put on the device in one transfer: `jnp.asarray` of each field would
    compile a small conversion program per field, a noticeable share of a warm decode.
    """
    spec.check()
    ss, cs = step_value(spec.scale_exp), step_value(spec.color_exp)
    os_ = step_value(spec.opacity_exp)
    f32, i32 = np.float32, np.int32
    return jax.device_put(Grid(
        pos_step=np.asarray(step_value(spec.pos_exp), f32),
        scale_lo=np.asarray(spec.scale_lo, i32),
        scale_step=np.asarray(ss, f32),
        scale_top=np.asarray(spec.scale_levels - 1, i32),
        angle_levels=angle_levels_table(spec),
        color_lo=np.asarray(spec.color_lo, i32),
        color_step=np.asarray(cs, f32),
        color_top=np.asarray(spec.color_levels, i32) - 1,
        opacity_lo=np.asarray(spec.opacity_lo, i32),
        opacity_step=np.asarray(os_, f32),
        opacity_top=np.asarray(spec.opacity_levels - 1, i32)))


def position_box(height: int, width: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x_min, x_max), (y_min, y_max)) in px: positions are clamped to this box."""
    return (-float(width), 2.0 * width), (-float(height), 2.0 * height)


def scale_limits(height: int, width: int) -> tuple[float, float]:
    """(lo, hi) log2 px: the range any coded standard deviation is limited to."""
    return SCALE_LOG2_FLOOR, math.log2(SCALE_MAX_FACTOR * max(height, width))


def canonical_colors(colors) -> np.ndarray:
    """[N, 3] RGB -> [N, 3] luma/chroma (COLOR_BASIS), float64 numpy."""
    return np.asarray(colors, np.float64) @ COLOR_BASIS.T


def _color_box() -> tuple[np.ndarray, np.ndarray]:
    """Per luma/chroma channel, the range of the RGB box COLOR_BOX."""
    lo, hi = COLOR_BOX
    pos, neg = np.clip(COLOR_BASIS, 0, None), np.clip(COLOR_BASIS, None, 0)
    return pos.sum(1) * lo + neg.sum(1) * hi, pos.sum(1) * hi + neg.sum(1) * lo


def choose_spec(params: P.GaussianParams, height: int, width: int, *, pos_exp: int = -16,
                scale_exp: int = -32, angle_exp: int = 0, color_exp: int = -64,
                opacity_exp: int = -64) -> QuantSpec:
    """The quantizer of `params` (N rows, fitted at height x width px) for the given steps.

    The ranges are the data's (after the canonical axis order and the colour transform),
    limited to the scale limits and the colour box, rounded outwards to whole steps; level
    counts above MAX_LEVELS are refused (use a coarser step). The scales of Gaussians that
    add nothing (`codec.prune.absent`: the file leaves them out) do not widen their range;
    their zero colours and opacities are in theirs, so that they decode to zero.

    Raises:
      ValueError: a step exponent outside QUANT_LIMITS, or a range needing > MAX_LEVELS codes.
    """
    P._check_size(height, width)
    ss = step_value(scale_exp)
    s = np.abs(np.asarray(params.scales, np.float64))
    if params.num:
        from smartsplat_jax.codec.prune import absent

        live = ~absent(params)
        s = s[live] if live.any() else s
    slo, shi = scale_limits(height, width)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.clip(np.nan_to_num(np.log2(s), nan=slo), slo, shi) if s.size else np.zeros((0, 2))
    lo_code = math.floor(float(ls.min()) / ss + 0.5) if ls.size else 0
    hi_code = math.floor(float(ls.max()) / ss + 0.5) if ls.size else 0
    lo_code = max(lo_code, math.ceil(slo / ss - 1e-9))
    hi_code = max(min(hi_code, math.floor(shi / ss + 1e-9)), lo_code)

    cs = step_value(color_exp)
    c = canonical_colors(params.colors) if params.num else np.zeros((0, 3))
    blo, bhi = _color_box()
    if c.size:
        c = np.clip(np.nan_to_num(c), blo, bhi)
        clo = np.floor(c.min(0) / cs + 0.5).astype(np.int64)
        chi = np.floor(c.max(0) / cs + 0.5).astype(np.int64)
    else:
        clo = chi = np.zeros(3, np.int64)

    o = np.asarray(params.opacity, np.float64)
    if o.size == 0 or np.all(o == 1.0):
        olo, olevels = 0, 0
    else:
        ost = step_value(opacity_exp)
        o = np.clip(np.nan_to_num(o), 0.0, 1.0)
        olo = math.floor(float(o.min()) / ost + 0.5)
        olevels = math.floor(float(o.max()) / ost + 0.5) - olo + 1
    levels = [hi_code - lo_code + 1, *(chi - clo + 1), max(olevels, 1)]
    if max(levels) > MAX_LEVELS:
        raise ValueError(f"the data's ranges need {max(levels)} codes at these steps, more than "
                         f"{MAX_LEVELS}; use coarser steps")
    return QuantSpec(pos_exp=pos_exp, scale_exp=scale_exp, scale_lo=int(lo_code),
                     scale_levels=int(hi_code - lo_code + 1), angle_exp=angle_exp,
                     color_exp=color_exp, color_lo=tuple(int(v) for v in clo),
                     color_levels=tuple(int(v) for v in chi - clo + 1),
                     opacity_exp=opacity_exp, opacity_lo=int(olo),
                     opacity_levels=int(olevels)).check()


# ----------------------------------------------------------------------------- jax functions

def _round_clip(x: jax.Array, top: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(x), 0, top).astype(jnp.int32)


def _log_scale_codes(params: P.GaussianParams, g: Grid) -> jax.Array:
    """[N, 2] scale codes of the two axes in the params' own order."""
    ls = jnp.log2(jnp.maximum(jnp.nan_to_num(jnp.abs(params.scales)), 1e-30))
    return _round_clip(ls / g.scale_step - g.scale_lo.astype(ls.dtype), g.scale_top)


def _angle_code(theta: jax.Array, levels: jax.Array) -> jax.Array:
    """[N] code of theta (radians) modulo pi on the grid pi/2 + a pi / levels."""
    lv = levels.astype(theta.dtype)
    u = jnp.mod(theta - 0.5 * jnp.pi, jnp.pi) / jnp.pi
    return jnp.mod(jnp.round(u * lv), lv).astype(jnp.int32)


def _angle_value(code: jax.Array, levels: jax.Array) -> jax.Array:
    return 0.5 * jnp.pi + code.astype(jnp.float32) * (jnp.pi / levels.astype(jnp.float32))


def quantize(params: P.GaussianParams, g: Grid, height: int, width: int) -> Codes:
    """Integer codes of N Gaussians (jittable; the params' row order is kept).

    Args:
      params: raw parameters (N rows) fitted at height x width px.
      g: the quantizer, `grid(spec)`.

    Returns:
      `Codes` (int32). Non-finite values are clamped like out-of-range ones.
    """
    (x0, x1), (y0, y1) = position_box(height, width)
    xy = P.normalized_to_pixel(jnp.nan_to_num(params.means), height, width)
    xy = jnp.clip(xy, jnp.asarray([x0, y0], xy.dtype), jnp.asarray([x1, y1], xy.dtype))
    position = jnp.round(xy / g.pos_step).astype(jnp.int32)

    k = _log_scale_codes(params, g)
    kmaj = jnp.maximum(k[:, 0], k[:, 1])
    aniso = kmaj - jnp.minimum(k[:, 0], k[:, 1])
    # The axis order follows the quantized codes (equal codes: isotropic, no angle).
    swap = k[:, 1] > k[:, 0]
    levels = g.angle_levels[aniso]
    theta = P.rotation_angle(jnp.nan_to_num(params.rotation))[:, 0]
    theta = theta + jnp.where(swap, 0.5 * jnp.pi, 0.0)
    angle = jnp.where(aniso > 0, _angle_code(theta, levels), 0)

    c = jnp.nan_to_num(params.colors) @ jnp.asarray(COLOR_BASIS.T, params.colors.dtype)
    color = _round_clip(c / g.color_step - g.color_lo.astype(c.dtype), g.color_top)

    o = jnp.nan_to_num(params.opacity[:, 0])
    opacity = jnp.where(g.opacity_top >= 0,
                        _round_clip(o / g.opacity_step - g.opacity_lo.astype(o.dtype),
                                    jnp.maximum(g.opacity_top, 0)), 0)
    return Codes(position=position, scale=kmaj, aniso=aniso, angle=angle, color=color,
                 opacity=opacity)


def dequantize(codes: Codes, g: Grid, height: int, width: int) -> P.GaussianParams:
    """Float32 raw parameters of integer codes (jittable): what a decoded file holds.

    The major axis is x; theta = pi/2 + angle * pi / L(aniso) (pi/2 when isotropic).
    """
    f32 = jnp.float32
    xy = codes.position.astype(f32) * g.pos_step
    means = P.pixel_to_normalized(xy, height, width)
    lmaj = (g.scale_lo + codes.scale).astype(f32) * g.scale_step
    lmin = (g.scale_lo + codes.scale - codes.aniso).astype(f32) * g.scale_step
    scales = jnp.exp2(jnp.stack([lmaj, lmin], -1))
    levels = g.angle_levels[codes.aniso]
    theta = _angle_value(codes.angle, levels)
    rotation = P.angle_to_raw(theta)[:, None]
    c = (g.color_lo + codes.color).astype(f32) * g.color_step
    colors = c @ jnp.asarray(COLOR_BASIS, f32)
    o = (g.opacity_lo + codes.opacity).astype(f32) * g.opacity_step
    opacity = jnp.where(g.opacity_top >= 0, o, 1.0)[:, None]
    return P.GaussianParams(means=means, scales=scales, rotation=rotation, colors=colors,
                            opacity=opacity)


def _ste(x: jax.Array, q: jax.Array) -> jax.Array:
    """q exactly in the forward pass, identity gradient to x (straight-through estimator)."""
    return q.astype(x.dtype) + (x - jax.lax.stop_gradient(x))


def fake_quantize(params: P.GaussianParams, g: Grid, height: int,
                  width: int) -> P.GaussianParams:
    """`dequantize(quantize(params))` in the params' own representation, with straight-through
    gradients (jittable).

    The forward value is the same Gaussian as the decoded one, bit for bit in every attribute
    but the representation of the axes: the decoder puts the major axis first, here the params'
    own axis order and sign convention are kept (same covariance), so that the identity
    gradient moves each raw parameter by what its quantized version would want.
    """
    codes = quantize(params, g, height, width)
    q = dequantize(codes, g, height, width)
    swap = codes.scale != _log_scale_codes(params, g)[:, 0]  # the x axis was not the major one
    sq = jnp.where(swap[:, None], q.scales[:, ::-1], q.scales)
    sq = jnp.where(params.scales < 0, -sq, sq)  # |.| is the activation: keep the raw sign
    theta = _angle_value(codes.angle, g.angle_levels[codes.aniso])
    # Back in the params' frame: theta - pi/2 if swapped, which on an even grid is again a
    # grid point of [pi/2, 3pi/2).
    theta = jnp.where(swap, jnp.where(theta >= jnp.pi, theta - 0.5 * jnp.pi,
                                      theta + 0.5 * jnp.pi), theta)
    rotation = P.angle_to_raw(theta)[:, None]
    return P.GaussianParams(means=_ste(params.means, q.means), scales=_ste(params.scales, sq),
                            rotation=_ste(params.rotation, rotation),
                            colors=_ste(params.colors, q.colors),
                            opacity=_ste(params.opacity, q.opacity), blend=params.blend)


def project(params: P.GaussianParams, g: Grid, height: int, width: int) -> P.GaussianParams:
    """The params moved into the range the grid can code (jittable; a projection: values
    whose codes are in range are unchanged). Positions into the box, |scales| into the cells
    of the scale codes (signs kept), colours into the cells of the luma/chroma codes; the
    angle needs none."""
    (x0, x1), (y0, y1) = position_box(height, width)
    dt = params.means.dtype
    lo = P.pixel_to_normalized(jnp.asarray([x0, y0], dt), height, width)
    hi = P.pixel_to_normalized(jnp.asarray([x1, y1], dt), height, width)
    means = jnp.clip(params.means, lo, hi)
    half = 0.499  # of a step: inside the cells of the first and last codes
    smin = jnp.exp2((g.scale_lo.astype(dt) - half) * g.scale_step)
    smax = jnp.exp2(((g.scale_lo + g.scale_top).astype(dt) + half) * g.scale_step)
    s = jnp.clip(jnp.abs(params.scales), smin, smax)
    scales = jnp.where(params.scales == s, params.scales, jnp.where(params.scales < 0, -s, s))
    basis = jnp.asarray(COLOR_BASIS, dt)
    c = params.colors @ basis.T
    clo = (g.color_lo.astype(dt) - half) * g.color_step
    chi = ((g.color_lo + g.color_top).astype(dt) + half) * g.color_step
    moved = jnp.clip(c, clo, chi) - c
    colors = params.colors + moved @ basis  # exactly unchanged where nothing moved
    o = params.opacity
    otop = jnp.maximum(g.opacity_top, 0)
    opacity = jnp.where(g.opacity_top >= 0,
                        jnp.clip(o, (g.opacity_lo.astype(dt) - half) * g.opacity_step,
                                 ((g.opacity_lo + otop).astype(dt) + half) * g.opacity_step), o)
    return P.GaussianParams(means=means, scales=scales, rotation=params.rotation, colors=colors,
                            opacity=opacity, blend=params.blend)
