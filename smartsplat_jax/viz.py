"""Pictures of Gaussians for people: weight maps, ellipses over the image, annotated renders.

Pillow only (no plotting library). Everything returns or writes 8-bit RGB images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from smartsplat_jax import io as sio
from smartsplat_jax import params as P

__all__ = ["colormap", "draw_gaussians", "annotate", "save_init_visualization", "line_plot",
           "curves_plot"]

# A perceptually ordered dark-blue -> orange -> yellow ramp (8 anchors, linearly interpolated).
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float64) / 255.0

STAGE_COLOURS = {"variational": (255, 64, 64), "uniform": (64, 224, 255)}


def colormap(values: np.ndarray, gamma: float = 0.5) -> np.ndarray:
    """[H, W] values -> [H, W, 3] float colours in [0, 1], after v / max(v) and ** gamma."""
    v = np.asarray(values, np.float64)
    top = v.max() if v.size and v.max() > 0 else 1.0
    t = np.clip(v / top, 0.0, 1.0) ** gamma * (len(_RAMP) - 1)
    i = np.clip(np.floor(t).astype(int), 0, len(_RAMP) - 2)
    f = (t - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.float32)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8))


def draw_gaussians(image: np.ndarray, params: P.GaussianParams, labels: np.ndarray | None = None,
                   *, max_points: int = 20000, sigmas: float = 1.0, dim: float = 0.5,
                   seed: int = 0) -> Image.Image:
    """Draws each Gaussian's `sigmas`-sigma ellipse over a dimmed copy of the image.

    Args:
      image: [H, W, 3] float in [0, 1]; the means refer to its size.
      params: raw parameters (N rows).
      labels: [N] stage names ("variational" / "uniform"); colours from STAGE_COLOURS.
      max_points: draw at most this many (a fixed random subset), so 16K images stay quick.
    """
    h, w = image.shape[:2]
    canvas = _to_pil(np.asarray(image) * dim)
    draw = ImageDraw.Draw(canvas)
    n = params.means.shape[0]
    pick = np.arange(n)
    if n > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    mu = np.asarray(P.normalized_to_pixel(params.means, h, w))[pick]
    s = np.abs(np.asarray(params.scales))[pick] * sigmas
    theta = np.asarray(P.rotation_angle(params.rotation))[pick, 0]
    t = np.linspace(0, 2 * np.pi, 17)[:-1]
    ex = s[:, 0:1] * np.cos(t)  # [n, 16] in the Gaussian's frame
    ey = s[:, 1:2] * np.sin(t)
    c, sn = np.cos(theta)[:, None], np.sin(theta)[:, None]
    px = mu[:, 0:1] + c * ex - sn * ey
    py = mu[:, 1:2] + sn * ex + c * ey
    for k in range(len(pick)):
        colour = STAGE_COLOURS.get(str(labels[pick[k]]), (255, 255, 255)) if labels is not None \
            else (255, 255, 255)
        draw.polygon(list(zip(px[k].tolist(), py[k].tolist())), outline=colour)
    return canvas


def annotate(image: np.ndarray | Image.Image, text: str) -> Image.Image:
    """Writes `text` in the top-left corner on a dark box."""
    im = image if isinstance(image, Image.Image) else _to_pil(image)
    im = im.copy()
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((4, 4), text)
    draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
    draw.text((4, 4), text, fill=(255, 255, 255))
    return im


def _save(im: Image.Image, path: Path) -> Path:
    import io as _io

    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    sio.atomic_write_bytes(path, buf.getvalue())
    return path


def save_init_visualization(out_dir: str | os.PathLike, image: np.ndarray,
                            params: P.GaussianParams, info: dict, *, max_points: int = 20000,
                            prefix: str = "init") -> dict:
    """Writes the initialization's pictures and returns their paths and the render's PSNR.

    Files (in out_dir): {prefix}_weights.png (sampling weights), {prefix}_points.png
    (variational points red, uniform cyan, 1-sigma ellipses), {prefix}_render.png (the
    initial Gaussians rendered, PSNR written on it).
    """
    from smartsplat_jax import metrics
    from smartsplat_jax.init import tiles, variational
    from smartsplat_jax.render import render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    layout = tiles.tile_layout(h, w, info.get("tiles", {}).get("size", tiles.TILE_SIZE))
    wmap = variational.weight_map(np.asarray(image, np.float32), layout)
    n_vs = info.get("num_variational", 0)
    labels = np.array(["variational"] * n_vs + ["uniform"] * (params.means.shape[0] - n_vs))
    rendered = np.asarray(render(params, h, w))
    value = metrics.psnr(rendered, image)
    paths = {
        "weights": _save(annotate(colormap(wmap), "sampling weights w(x)"),
                         out / f"{prefix}_weights.png"),
        "points": _save(annotate(draw_gaussians(image, params, labels, max_points=max_points),
                                 f"N={params.means.shape[0]}: variational (red) {n_vs}, "
                                 f"uniform (cyan) {params.means.shape[0] - n_vs}"),
                        out / f"{prefix}_points.png"),
        "render": _save(annotate(rendered, f"initialization: PSNR {value:.2f} dB"),
                        out / f"{prefix}_render.png"),
    }
    return {"paths": {k: str(v) for k, v in paths.items()}, "psnr": value}


def line_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str = "",
              xlabel: str = "", size: tuple[int, int] = (640, 400)) -> Image.Image:
    """A small multi-panel line plot: one panel per series name -> (x, y) arrays."""
    width, height = size
    panels = max(1, len(series))
    im = Image.new("RGB", (width, height * panels), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for p, (name, (x, y)) in enumerate(series.items()):
        top = p * height
        left, right, bottom, upper = 60, width - 15, top + height - 35, top + 25
        draw.rectangle((left, upper, right, bottom), outline=(0, 0, 0))
        draw.text((left, top + 6), f"{title} {name}".strip(), fill=(0, 0, 0))
        draw.text((right - 80, bottom + 12), xlabel, fill=(0, 0, 0))
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if len(x) == 0:
            continue
        x0, x1 = x.min(), max(x.max(), x.min() + 1e-9)
        y0, y1 = y.min(), max(y.max(), y.min() + 1e-9)
        draw.text((4, upper), f"{y1:.4g}", fill=(0, 0, 0))
        draw.text((4, bottom - 10), f"{y0:.4g}", fill=(0, 0, 0))
        draw.text((left, bottom + 12), f"{x0:.4g}", fill=(0, 0, 0))
        draw.text((right - 40, bottom + 2), f"{x1:.4g}", fill=(0, 0, 0))
        sx = left + (x - x0) / (x1 - x0) * (right - left)
        sy = bottom - (y - y0) / (y1 - y0) * (bottom - upper)
        if len(x) == 1:
            draw.ellipse((sx[0] - 2, sy[0] - 2, sx[0] + 2, sy[0] + 2), fill=(30, 90, 200))
        else:
            draw.line(list(zip(sx.tolist(), sy.tolist())), fill=(30, 90, 200), width=2)
    return im


SERIES_COLOURS = ((30, 90, 200), (220, 60, 40), (40, 160, 60), (150, 60, 180), (230, 150, 20),
                  (90, 90, 90))


def curves_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str = "",
                xlabel: str = "", ylabel: str = "", size: tuple[int, int] = (640, 420),
                log_x: bool = False) -> Image.Image:
    """Several named (x, y) curves in one panel, each with markers and a legend entry.

    Points are drawn in the order given (a curve is a polyline through them); non-finite
    points are skipped. log_x: a log2 x axis (e.g. bits per pixel).
    """
    width, height = size
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    left, right, top, bottom = 62, width - 15, 28, height - 40
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    draw.text((left, 8), title, fill=(0, 0, 0))
    draw.text((right - 7 * len(xlabel) - 4, bottom + 22), xlabel, fill=(0, 0, 0))
    draw.text((4, top - 16), ylabel, fill=(0, 0, 0))
    clean = {}
    for name, (x, y) in series.items():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log_x else True)
        if keep.any():
            clean[name] = (np.log2(x[keep]) if log_x else x[keep], y[keep])
    if not clean:
        return im
    xs = np.concatenate([x for x, _ in clean.values()])
    ys = np.concatenate([y for _, y in clean.values()])
    x0, x1 = xs.min(), max(xs.max(), xs.min() + 1e-9)
    y0, y1 = ys.min(), max(ys.max(), ys.min() + 1e-9)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    for frac in (0.0, 0.5, 1.0):
        xv, yv = x0 + frac * (x1 - x0), y0 + frac * (y1 - y0)
        sx = left + frac * (right - left)
        sy = bottom - frac * (bottom - top)
        draw.text((sx - 14, bottom + 6), f"{2 ** xv if log_x else xv:.3g}", fill=(0, 0, 0))
        draw.text((4, sy - 6), f"{yv:.4g}", fill=(0, 0, 0))
        draw.line((left, sy, left + 4, sy), fill=(0, 0, 0))
    for i, (name, (x, y)) in enumerate(clean.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        sx = left + (x - x0) / (x1 - x0) * (right - left)
        sy = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        if len(x) > 1:
            draw.line(list(zip(sx.tolist(), sy.tolist())), fill=colour, width=2)
        for px, py in zip(sx, sy):
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        ly = top + 6 + 14 * i
        draw.rectangle((right - 150, ly + 2, right - 140, ly + 10), fill=colour)
        draw.text((right - 135, ly), name, fill=(0, 0, 0))
    return im
