"""Classic image codecs (JPEG, WebP, AVIF through Pillow) at a byte budget, for comparisons.

  data, decoded, quality = encode_at_bytes(image, "webp", max_bytes=12000)

The quality setting is searched (bisection over 1..100; the size grows with it) for the
largest one whose file has at most `max_bytes` bytes, so a row "at equal bytes" compares like
with like. 4:2:0 chroma subsampling stays at each encoder's default.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features

from smartsplat_jax import metrics

__all__ = ["FORMATS", "available", "encode_at_bytes", "measure_at_bytes", "rd_curve"]

FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


def available(fmt: str) -> bool:
    """Whether this Pillow build can write `fmt` ("jpeg", "webp" or "avif")."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} must be one of {', '.join(FORMATS)}")
    return fmt == "jpeg" or bool(features.check(fmt))


def _encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=FORMATS[fmt], quality=quality)
    return buf.getvalue()


def encode_at_bytes(image: np.ndarray, fmt: str, max_bytes: int):
    """The best-quality `fmt` file of `image` within `max_bytes`.

    Args:
      image: [H, W, 3] float in [0, 1] (quantized to 8 bits for the encoder).
      fmt: "jpeg", "webp" or "avif".
      max_bytes: the byte budget.

    Returns:
      (data, decoded, quality): the file's bytes, its decoding as [H, W, 3] float32 in [0, 1],
      and the quality used; (None, None, None) when even quality 1 exceeds the budget.
    """
    if not available(fmt):
        raise ValueError(f"this Pillow build cannot write {fmt}")
    im = Image.fromarray(np.clip(np.round(np.asarray(image) * 255), 0, 255).astype(np.uint8))
    lo, hi, best = 1, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        data = _encode(im, fmt, q)
        if len(data) <= max_bytes:
            best, lo = (q, data), q + 1
        else:
            hi = q - 1
    if best is None:
        return None, None, None
    q, data = best
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0
    return data, decoded, q


def measure_at_bytes(image: np.ndarray, fmt: str, max_bytes: int) -> dict:
    """The best `fmt` file of `image` within `max_bytes`, measured.

    Returns:
      {"format", "quality", "file_bytes", "bpp", "psnr", "ssim", "ms_ssim"}; the values are
      None when even quality 1 exceeds the budget (ms_ssim also for images whose shorter
      side is <= 160 px).
    """
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    data, decoded, quality = encode_at_bytes(image, fmt, max_bytes)
    row = {"format": fmt, "quality": quality, "file_bytes": None, "bpp": None, "psnr": None,
           "ssim": None, "ms_ssim": None}
    if data is not None:
        row.update(file_bytes=len(data), bpp=8.0 * len(data) / (h * w),
                   **metrics.quality(decoded, image))
    return row


def rd_curve(image: np.ndarray, fmt: str, qualities=(5, 15, 30, 50, 70, 85, 95)) -> list[dict]:
    """Rate-distortion points of `fmt` on `image` ([H, W, 3] float in [0, 1]).

    Returns:
      [{"quality", "bytes", "bpp", "psnr", "ms_ssim"}] per quality (ms_ssim None for images
      whose shorter side is <= 160 px).
    """
    if not available(fmt):
        raise ValueError(f"this Pillow build cannot write {fmt}")
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    im = Image.fromarray(np.clip(np.round(image * 255), 0, 255).astype(np.uint8))
    out = []
    for q in qualities:
        data = _encode(im, fmt, int(q))
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0
        out.append({"quality": int(q), "bytes": len(data), "bpp": 8.0 * len(data) / (h * w),
                    **metrics.quality(decoded, image)})
    return out
