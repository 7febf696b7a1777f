"""Image quality metrics: PSNR, SSIM, MS-SSIM (SPEC §7), in bounded memory.

All three take two [H, W, 3] arrays in [0, 1] (numpy or JAX) and return Python floats.

  * PSNR = 10 log10(1 / MSE) over all pixels and channels (inf for identical images).
  * SSIM: fused-ssim's definition, the training loss's (`losses.ssim`): 11x11 Gaussian
    window, sigma 1.5, zero padding, 'same' size, mean over pixels and channels.
  * MS-SSIM: pytorch_msssim's definition: 5 scales with weights
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); 'valid' (unpadded) SSIM/cs maps averaged per
    channel; relu on the cs values of the first 4 scales and on the last scale's SSIM; 2x2
    average pooling (stride 2, zero padding of (H mod 2, W mod 2) on each side, zeros counted)
    between scales; product of the powers, then the mean over channels. The shorter side
    must be over 160 pixels.

Memory: the maps are computed over bands of rows (at most `BAND_PIXELS` output pixels a band,
with a halo of 5 or 10 rows), so the peak beyond the two input images is a few hundred MB even
at 16384 x 16384. MS-SSIM keeps the downsampled pyramid (1/3 of the input size in total).
Band sums are accumulated in float64 on the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import filters

__all__ = ["psnr", "ssim", "ms_ssim", "quality", "MS_SSIM_WEIGHTS", "MS_SSIM_MIN_SIDE"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIDE = (filters.WINDOW_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)  # 160
BAND_PIXELS = 1 << 21


def _as_pair(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates two images and returns them as float32 numpy arrays (no copy if possible)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: images have shape {a.shape}; expected (H, W, 3) with H, W >= 1")
    for label, arr in (("first", a), ("second", b)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name}: {label} image has dtype {arr.dtype}; expected floats in [0, 1]")
    return a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)


def _band_rows(width: int) -> int:
    return int(max(8, min(4096, BAND_PIXELS // max(width, 1))))


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB of [H, W, 3] images in [0, 1] (data range 1)."""
    a, b = _as_pair(a, b, "psnr")
    rows = _band_rows(a.shape[1])
    total = 0.0
    for r0 in range(0, a.shape[0], rows):
        d = a[r0 : r0 + rows].astype(np.float64) - b[r0 : r0 + rows]
        total += float(np.dot(d.ravel(), d.ravel()))
    mse = total / a.size
    if not np.isfinite(mse):
        raise ValueError("psnr: images contain NaN or infinite values")
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(1.0 / mse))


@functools.partial(jax.jit, static_argnames=("out_rows",))
def _band_sums(xb: jax.Array, yb: jax.Array, valid_rows: jax.Array, out_rows: int):
    """Per-channel sums of the SSIM and cs maps over the first `valid_rows` output rows.

    xb, yb: [out_rows + 10, W + 10 or W, 3]; 'valid' maps are [out_rows, ., 3].
    Returns two [3] float32 arrays.
    """
    ssim_map, cs_map = filters.ssim_maps_valid(xb, yb)
    mask = (jnp.arange(out_rows) < valid_rows)[:, None, None]
    return (jnp.sum(jnp.where(mask, ssim_map, 0.0), axis=(0, 1)),
            jnp.sum(jnp.where(mask, cs_map, 0.0), axis=(0, 1)))


def _banded_map_means(x: np.ndarray, y: np.ndarray, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel means of the SSIM and cs maps of [H, W, 3] images.

    same=True: zero padding, 'same' output size (H x W). same=False: 'valid' ((H-10) x (W-10)).
    """
    h, w, _ = x.shape
    half = filters.HALF
    halo = filters.WINDOW_SIZE - 1
    out_h, out_w = (h, w) if same else (h - halo, w - halo)
    rows = min(_band_rows(w), out_h)
    in_w = w + halo if same else w
    # Fixed band shape (rows + halo input rows), so one compilation serves every band.
    xb = np.zeros((rows + halo, in_w, 3), np.float32)
    yb = np.zeros_like(xb)
    ssim_sum = np.zeros(3, np.float64)
    cs_sum = np.zeros(3, np.float64)
    col = slice(half, half + w) if same else slice(0, w)
    for r0 in range(0, out_h, rows):
        valid = min(rows, out_h - r0)
        # Input rows feeding output rows [r0, r0 + rows): [r0 - half, r0 + rows + half) when
        # 'same' (zeros outside the image), [r0, r0 + rows + halo) when 'valid'.
        start = r0 - half if same else r0
        lo, hi = max(start, 0), min(start + rows + halo, h)
        xb.fill(0.0)
        yb.fill(0.0)
        xb[lo - start : hi - start, col] = x[lo:hi]
        yb[lo - start : hi - start, col] = y[lo:hi]
        s, c = _band_sums(xb, yb, np.int32(valid), out_rows=rows)
        ssim_sum += np.asarray(s, np.float64)
        cs_sum += np.asarray(c, np.float64)
    count = float(out_h) * float(out_w)
    return ssim_sum / count, cs_sum / count


def ssim(a, b) -> float:
    """Mean SSIM of [H, W, 3] images in [0, 1] (fused-ssim definition; see module docstring)."""
    a, b = _as_pair(a, b, "ssim")
    s, _ = _banded_map_means(a, b, same=True)
    return float(np.mean(s))


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """torch avg_pool2d(kernel 2, stride 2, padding (H%2, W%2)), zeros counted, on [H, W, C]."""
    h, w, c = x.shape
    ph, pw = h % 2, w % 2
    oh, ow = (h + 2 * ph - 2) // 2 + 1, (w + 2 * pw - 2) // 2 + 1
    out = np.empty((oh, ow, c), np.float32)
    rows = max(1, _band_rows(w) // 2)
    for o0 in range(0, oh, rows):
        o1 = min(oh, o0 + rows)
        # Padded rows 2*o0 .. 2*o1 - 1 are image rows 2*o0 - ph .. 2*o1 - 1 - ph.
        block = np.zeros((2 * (o1 - o0), w + 2 * pw, c), np.float32)
        lo, hi = max(2 * o0 - ph, 0), min(2 * o1 - ph, h)
        block[lo - (2 * o0 - ph) : hi - (2 * o0 - ph), pw : pw + w] = x[lo:hi]
        block = block[:, : 2 * ow]
        out[o0:o1] = 0.25 * (block[0::2, 0::2] + block[0::2, 1::2]
                             + block[1::2, 0::2] + block[1::2, 1::2])
    return out


def ms_ssim(a, b) -> float:
    """Multi-scale SSIM of [H, W, 3] images in [0, 1] (pytorch_msssim's definition).

    Raises:
      ValueError: the shorter side is 160 pixels or less (four 2x downsamplings must leave
        room for the 11-tap window).
    """
    a, b = _as_pair(a, b, "ms_ssim")
    h, w, _ = a.shape
    if min(h, w) <= MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"ms_ssim: image is {h}x{w}; MS-SSIM needs the shorter side to be over "
            f"{MS_SSIM_MIN_SIDE} pixels (4 downsamplings by 2 with an 11-pixel window)"
        )
    weights = np.asarray(MS_SSIM_WEIGHTS, np.float64)
    factors = []
    x, y = a, b
    for level in range(len(weights)):
        s, c = _banded_map_means(x, y, same=False)
        if level < len(weights) - 1:
            factors.append(np.maximum(c, 0.0))
            x, y = _avg_pool2(x), _avg_pool2(y)
        else:
            factors.append(np.maximum(s, 0.0))
    stacked = np.stack(factors)  # [levels, 3]
    per_channel = np.prod(stacked ** weights[:, None], axis=0)
    return float(np.mean(per_channel))


def quality(a, b) -> dict:
    """{"psnr", "ssim", "ms_ssim"} of [H, W, 3] images in [0, 1]; ms_ssim is None for images
    whose shorter side is `MS_SSIM_MIN_SIDE` px or less (too small for its five scales)."""
    try:
        ms = ms_ssim(a, b)
    except ValueError:
        if min(np.shape(a)[:2]) > MS_SSIM_MIN_SIDE:
            raise
        ms = None
    return {"psnr": psnr(a, b), "ssim": ssim(a, b), "ms_ssim": ms}
