"""The Gaussian parameter pytree, its activations (SPEC §2) and the CR budget (SPEC §1).

Conventions:
  * Pixel centres sit at integer coordinates: column j is x = j, row i is y = i.
  * Means are stored normalized: x_pix = 0.5 * W * (x + 1), y_pix = 0.5 * H * (y + 1), so
    x = -1 is the centre of column 0 and x = +1 lies one pixel past the last column.
  * Scales are standard deviations in pixels along the Gaussian's two axes, through
    max(|.|, SCALE_FLOOR): the floor, 2**-6 px, is the codec's smallest coded scale, so no
    covariance is singular and the rasterizer's weights stay finite (SPEC §2).
  * The angle is theta = 2*pi*sigmoid(r) in radians; r = 0 gives theta = pi.
  * Colours are linear RGB, nominally in [0, 1], with no activation.
  * Opacity is fixed to 1 for SmartSplat.
  * Compositing: Gaussians are added (SPEC §3), unless the set says `blend=True` (the 3DGS
    baseline): then they are alpha-blended front to back in row order, row 0 in front
    (`render.blend`). The flag is static pytree metadata, so it follows the set through
    jit, grad, optax updates, the codec and every renderer.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BYTES_PER_GAUSSIAN",
    "SCALE_FLOOR",
    "GaussianParams",
    "CholeskyParams",
    "cholesky_factor",
    "floor_magnitude",
    "num_gaussians",
    "cr_range",
    "scale_activation",
    "rotation_angle",
    "angle_to_raw",
    "covariance",
    "pixel_to_normalized",
    "normalized_to_pixel",
    "row_bucket",
    "pad_rows",
]

# The paper's accounting: 7 bytes per Gaussian (SPEC §1).
BYTES_PER_GAUSSIAN = 7
# The smallest standard deviation a Gaussian can have, in pixels (SPEC §2): the codec's
# smallest coded scale (codec.quantize.SCALE_LOG2_FLOOR), applied by every renderer.
SCALE_FLOOR = 2.0 ** -6


class _Rows:
    """What both parameter pytrees share: N rows per field, of the widths in `_WIDTHS`."""

    _WIDTHS: dict = {}
    blend = False  # additive compositing (GaussianParams may say otherwise)

    def replace(self, **changes):
        """A copy with these fields replaced (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """The array fields, in leaf order (the static `blend` flag is not one)."""
        return tuple(self._WIDTHS)

    @property
    def num(self) -> int:
        """N, the number of Gaussians."""
        return self.means.shape[0]

    def validate(self):
        """Checks the field shapes agree; returns self. Raises ValueError naming the field."""
        n = self.means.shape[0] if getattr(self.means, "ndim", 0) >= 1 else None
        for name, width in self._WIDTHS.items():
            shape = tuple(getattr(self, name).shape)
            if shape != (n, width):
                raise ValueError(f"{type(self).__name__}.{name} has shape {shape}; expected "
                                 f"({n}, {width}) for N = {n} Gaussians")
        return self


@dataclasses.dataclass(frozen=True)
class GaussianParams(_Rows):
    """Raw (pre-activation) parameters of N 2D Gaussians; a JAX pytree (an immutable
    dataclass registered with `jax.tree_util.register_dataclass`; leaves in field order).

    Attributes:
      means: [N, 2] (x, y) in normalized coordinates (see module docstring).
      scales: [N, 2] raw standard deviations in pixels; the activation is
        max(|.|, SCALE_FLOOR).
      rotation: [N, 1] raw angle; theta = 2*pi*sigmoid(rotation).
      colors: [N, 3] RGB, no activation.
      opacity: [N, 1] opacity; 1 for SmartSplat (not trained).
      blend: static (not a leaf). False: the Gaussians add up (SPEC §3). True: they are
        alpha-blended front to back in row order, row 0 in front, opacity in [0, 1]
        (3DGS; `render.blend`).
    """

    means: jax.Array
    scales: jax.Array
    rotation: jax.Array
    colors: jax.Array
    opacity: jax.Array
    blend: bool = False

    _WIDTHS = {"means": 2, "scales": 2, "rotation": 1, "colors": 3, "opacity": 1}

    @classmethod
    def create(cls, means, scales, colors, rotation=None, opacity=None, dtype=jnp.float32,
               blend: bool = False):
        """Builds params, filling rotation with 0 (theta = pi) and opacity with 1 if omitted."""
        means = jnp.asarray(means, dtype)
        n = means.shape[0]
        rotation = jnp.zeros((n, 1), dtype) if rotation is None else jnp.asarray(rotation, dtype)
        opacity = jnp.ones((n, 1), dtype) if opacity is None else jnp.asarray(opacity, dtype)
        return cls(means=means, scales=jnp.asarray(scales, dtype),
                   rotation=rotation.reshape(n, 1), colors=jnp.asarray(colors, dtype),
                   opacity=opacity.reshape(n, 1), blend=bool(blend))


jax.tree_util.register_dataclass(
    GaussianParams, data_fields=["means", "scales", "rotation", "colors", "opacity"],
    meta_fields=["blend"])


@dataclasses.dataclass(frozen=True)
class CholeskyParams(_Rows):
    """N 2D Gaussians in GaussianImage's Cholesky parameterisation (GaussianImage, Zhang et
    al., ECCV 2024, Sec. 3.1; the authors' `gaussianimage_cholesky.py`); a JAX pytree that
    every renderer and `train.fit` take in place of `GaussianParams`.

    Attributes:
      means: [N, 2] normalized (x, y), as in `GaussianParams`.
      cholesky: [N, 3] raw (l11, l21, l22) in pixels: Sigma = L L^T with
        L = [[l11, 0], [l21, l22]] (`cholesky_factor` floors |l11| and |l22| at
        SCALE_FLOOR, so Sigma is never singular).
      colors: [N, 3] RGB, no activation.
      opacity: [N, 1], 1 (not trained).

    The file format stores scales and angles: `to_gaussian_params` converts exactly (the
    eigen-decomposition of Sigma; not differentiated).
    """

    means: jax.Array
    cholesky: jax.Array
    colors: jax.Array
    opacity: jax.Array

    _WIDTHS = {"means": 2, "cholesky": 3, "colors": 3, "opacity": 1}

    def to_gaussian_params(self) -> GaussianParams:
        """The same Gaussians as `GaussianParams` (scales along the principal axes, major
        first, and the angle of the major axis), up to float rounding, except that a minor
        axis below SCALE_FLOOR (possible here: the floor bounds L's diagonal, not Sigma's
        eigenvalues) is raised to it, as every `GaussianParams` renderer does."""
        l11, l21, l22 = cholesky_factor(self.cholesky)
        a, b, c = l11 * l11, l11 * l21, l21 * l21 + l22 * l22  # Sigma = [[a, b], [b, c]]
        half, mean = 0.5 * (a - c), 0.5 * (a + c)
        lam1 = mean + jnp.hypot(half, b)
        lam2 = (l11 * l22) ** 2 / lam1  # det / lam1: no cancellation
        theta = 0.5 * jnp.arctan2(b, half)  # the major axis, in (-pi/2, pi/2]
        theta = jnp.where(theta <= 0, theta + jnp.pi, theta)  # (0, pi]: inside (0, 2pi)
        scales = jnp.stack([jnp.sqrt(lam1), jnp.sqrt(lam2)], -1)
        scales = jnp.maximum(scales, jnp.asarray(SCALE_FLOOR, scales.dtype))
        return GaussianParams(means=self.means, scales=scales.astype(self.means.dtype),
                              rotation=angle_to_raw(theta)[:, None].astype(self.means.dtype),
                              colors=self.colors, opacity=self.opacity)


jax.tree_util.register_dataclass(
    CholeskyParams, data_fields=["means", "cholesky", "colors", "opacity"], meta_fields=[])


def floor_magnitude(raw: jax.Array) -> jax.Array:
    """`raw` with every |value| at least SCALE_FLOOR, sign kept (0 goes to +floor)."""
    f = jnp.asarray(SCALE_FLOOR, raw.dtype)
    return jnp.where(jnp.abs(raw) < f, jnp.where(raw < 0, -f, f), raw)


def cholesky_factor(raw: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[N, 3] raw (l11, l21, l22) -> (l11, l21, l22), each [N], with |l11| and |l22| at least
    SCALE_FLOOR (`floor_magnitude`), in pixels."""
    return floor_magnitude(raw[:, 0]), raw[:, 1], floor_magnitude(raw[:, 2])


def scale_activation(raw_scales: jax.Array) -> jax.Array:
    """[..., 2] raw scales -> standard deviations in pixels: max(|raw|, SCALE_FLOOR).

    Below the floor the gradient is 0 (half of it at the floor itself, as jnp.maximum
    passes it); the training loop keeps raw scales at or above it (`train.loop`)."""
    return jnp.maximum(jnp.abs(raw_scales), jnp.asarray(SCALE_FLOOR, raw_scales.dtype))


def rotation_angle(raw_rotation: jax.Array) -> jax.Array:
    """[..., 1] raw angle -> theta in radians, in (0, 2*pi)."""
    return 2.0 * jnp.pi * jax.nn.sigmoid(raw_rotation)


def angle_to_raw(theta: jax.Array) -> jax.Array:
    """Inverse of `rotation_angle` for theta in (0, 2*pi) radians (logit(theta / 2pi))."""
    u = theta / (2.0 * jnp.pi)
    return jnp.log(u) - jnp.log1p(-u)


def covariance(params: GaussianParams) -> jax.Array:
    """[N, 2, 2] pixel-space covariances Sigma = R S S^T R^T (SPEC §2)."""
    s = scale_activation(params.scales)
    theta = rotation_angle(params.rotation)[..., 0]
    c, sn = jnp.cos(theta), jnp.sin(theta)
    rot = jnp.stack([jnp.stack([c, -sn], -1), jnp.stack([sn, c], -1)], -2)  # [N, 2, 2]
    rs = rot * s[:, None, :]
    return rs @ jnp.swapaxes(rs, -1, -2)


def _array_module(x):
    """numpy for numpy arrays (host arithmetic, no compiled program per operation), else
    jax.numpy (jax arrays, tracers, lists)."""
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def normalized_to_pixel(means: jax.Array, height: int, width: int) -> jax.Array:
    """[..., 2] normalized (x, y) -> pixel (x, y), pixel centres at integers.

    A numpy array gives a numpy array of its dtype (the same IEEE operations), anything
    else a jax array."""
    xp = _array_module(means)
    size = xp.asarray([width, height], dtype=xp.result_type(means))
    return 0.5 * size * (means + 1.0)


def pixel_to_normalized(xy: jax.Array, height: int, width: int) -> jax.Array:
    """[..., 2] pixel (x, y) -> normalized (x, y); inverse of `normalized_to_pixel`. A numpy
    array gives a numpy array, as there."""
    xp = _array_module(xy)
    size = xp.asarray([width, height], dtype=xp.result_type(xy))
    return 2.0 * xy / size - 1.0


def row_bucket(n: int) -> int:
    """The smallest m * 2**e >= n with 16 <= m < 32 (n itself below 32): Gaussian counts
    rounded up to four significant bits, at most 1/16 more. Decoding renders files padded to
    their bucket (`pad_rows`), so files whose N differ a little share compiled programs."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative integer number of Gaussians")
    e = max(0, int(n).bit_length() - 5)
    return -(-int(n) >> e) << e if e else int(n)


def pad_rows(params: GaussianParams, total: int) -> GaussianParams:
    """`params` with rows appended up to `total` that render nothing.

    The new rows have opacity 0, so every renderer's projection (`render.xla.project`)
    gives them no tile and no (tile, Gaussian) pair: the pairs, their order, their sums and a
    blended set's depth order (the new rows come last, behind everything) are those of
    `params`, and so is the image (bit for bit in every case measured on CPU; XLA could in
    principle round a per-Gaussian feature of the longer arrays differently). Their
    colours are 0, scales 1 px, angle 0, at the image centre. Built in numpy and put on the
    default device (no compiled program).

    Raises:
      TypeError: not a GaussianParams; ValueError: total < params.num.
    """
    if not isinstance(params, GaussianParams):
        raise TypeError(f"pad_rows takes GaussianParams, got {type(params).__name__}")
    extra = total - params.num
    if extra < 0:
        raise ValueError(f"pad_rows: total={total} is below the {params.num} rows of params")
    if extra == 0:
        return params
    leaves = {}
    for name, width in params._WIDTHS.items():
        a = np.asarray(getattr(params, name))
        fill = np.ones if name == "scales" else np.zeros
        leaves[name] = jax.device_put(np.concatenate([a, fill((extra, width), a.dtype)]))
    return params.replace(**leaves)


def _check_size(height, width) -> tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer number of pixels")
    return int(height), int(width)


def cr_range(height: int, width: int) -> tuple[float, float]:
    """The compression ratios (min, max) that give 1 <= N <= H*W for an H x W image.

    N = floor(3HW / (7 CR)) <= HW needs CR >= 3/7; N >= 1 needs CR <= 3HW/7.
    """
    height, width = _check_size(height, width)
    raw = 3 * height * width
    return raw / (BYTES_PER_GAUSSIAN * height * width), raw / BYTES_PER_GAUSSIAN


def _valid_cr_text(height: int, width: int) -> str:
    """The valid CRs of an image as text whose printed bounds are themselves valid: decimals
    rounded inwards (a 1-pixel image has the single valid CR 3/7)."""
    from decimal import Decimal

    lo, hi = Fraction(3, BYTES_PER_GAUSSIAN), Fraction(3 * height * width, BYTES_PER_GAUSSIAN)
    if lo == hi:
        return f"cr must be 3/7 = {float(lo)!r} (one Gaussian) for a 1-pixel image"
    for places in range(4, 21):
        scale = 10 ** places
        lo_d, hi_d = math.ceil(lo * scale), math.floor(hi * scale)
        if lo_d <= hi_d:
            return (f"cr must be in [{Decimal(lo_d).scaleb(-places)}, "
                    f"{Decimal(hi_d).scaleb(-places)}]")
    return f"cr must be in [{float(lo)!r}, {float(hi)!r}]"


def num_gaussians(height: int, width: int, cr: float) -> int:
    """Number of Gaussians for a target compression ratio: floor(3HW / (7 CR)) (SPEC §1).

    Args:
      height, width: image size in pixels.
      cr: target compression ratio (raw RGB bytes / compressed bytes), > 0.

    Raises:
      ValueError: non-finite or non-positive CR, or one outside the image's valid range.
    """
    height, width = _check_size(height, width)
    valid = _valid_cr_text(height, width)
    try:
        crf = float(cr)
    except (TypeError, ValueError):
        raise ValueError(f"cr={cr!r} is not a number; for a {height}x{width} image "
                         f"{valid}") from None
    if not math.isfinite(crf) or crf <= 0:
        raise ValueError(f"cr={cr!r} must be a finite positive number; for a {height}x{width} "
                         f"image {valid}")
    # Exact rational arithmetic: floor(3HW / (7 CR)) with CR's exact binary value.
    num = math.floor(Fraction(3 * height * width) / (BYTES_PER_GAUSSIAN * Fraction(crf)))
    if num < 1 or num > height * width:
        raise ValueError(
            f"cr={crf:g} gives N={num} Gaussians for a {height}x{width} image (H={height}, "
            f"W={width}); N must be in [1, H*W], so {valid}"
        )
    return num
