"""Figures for notebooks and reports (matplotlib): what a fit did and how good the file is.

Each function returns a `matplotlib.figure.Figure` (shown by a notebook when it is a cell's
last value; `fig.savefig(path)` writes it). matplotlib is an optional dependency
(`pip install "smartsplat-jax[notebook]"`; Colab and Jupyter have it already); the rest of
the package never imports this module. `smartsplat_jax.viz` draws the launchers' pictures
with Pillow alone.

Images are float arrays [H, W, 3] in [0, 1]; parameters are `GaussianParams` of that image
size; histories are what `train.fit` returns.

  compare(original, decoded)           side by side, and a zoomed crop of both
  error_map(original, decoded)         per-pixel absolute error
  gaussians(image, params)             the Gaussians as 1-sigma ellipses over the image
  initialization(image, params, info)  sampling weights, initial points, initial render
  training_curves(history)             loss and PSNR against the step
  rate_distortion(curves)              PSNR and MS-SSIM against bits per pixel
  method_curves(histories)             PSNR against steps and against time, per method
"""

from __future__ import annotations

import math

import numpy as np

from smartsplat_jax import params as P

__all__ = ["compare", "error_map", "gaussians", "initialization", "training_curves",
           "rate_distortion", "method_curves", "worst_crop"]


_FIGURE_CLASS = None


def _new_figure(figsize):
    """A figure outside pyplot's registry (never leaked, usable without a display) that a
    notebook shows once, as a PNG, when it is a cell's value."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        try:
            from matplotlib.figure import Figure
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("smartsplat_jax.plots needs matplotlib: pip install "
                              "'smartsplat-jax[notebook]' (or pip install matplotlib)") from None

        class PlotFigure(Figure):
            """A matplotlib Figure that IPython displays as PNG without pyplot."""

            def _repr_png_(self) -> bytes:
                import io

                buf = io.BytesIO()
                self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
                return buf.getvalue()

        _FIGURE_CLASS = PlotFigure
    return _FIGURE_CLASS(figsize=figsize)


def _subplots(rows: int, cols: int, figsize):
    fig = _new_figure(figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _image(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name} must be an [H, W, 3] image, got shape {a.shape}")
    return np.clip(a, 0.0, 1.0)


def _pair(original, decoded) -> tuple[np.ndarray, np.ndarray]:
    a, b = _image(original, "original"), _image(decoded, "decoded")
    if a.shape != b.shape:
        raise ValueError(f"original {a.shape} and decoded {b.shape} must have the same shape")
    return a, b


def _figure(rows: int, cols: int, image_shape, width: float = 12.0):
    h, w = image_shape[:2]
    height = width / cols * rows * h / w + 0.6 * rows
    fig, axes = _subplots(rows, cols, (width, height))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def worst_crop(original, decoded, size: int | None = None) -> tuple[int, int, int]:
    """(top, left, size) of the square crop with the largest mean squared error.

    `size`: its side in px (default a quarter of the shorter side, at least 8)."""
    a, b = _pair(original, decoded)
    h, w = a.shape[:2]
    size = int(size or max(8, min(h, w) // 4))
    size = min(size, h, w)
    err = np.square(a - b).mean(-1)
    c = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), size


def compare(original, decoded, *, titles=("original", "decoded"), crop=None):
    """Original | decoded on the first row, the same zoomed crop of both on the second.

    `crop`: (top, left, size) in px, default `worst_crop` (where the error is largest)."""
    from matplotlib.patches import Rectangle

    from smartsplat_jax import metrics

    a, b = _pair(original, decoded)
    top, left, size = crop or worst_crop(a, b)
    fig, axes = _figure(2, 2, a.shape)
    psnr = metrics.psnr(b, a)
    for col, (img, title) in enumerate(zip((a, b), titles)):
        ax = axes[0, col]
        ax.imshow(img, interpolation="lanczos")
        ax.set_title(title if col == 0 else f"{title}: PSNR {psnr:.2f} dB")
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                               edgecolor="yellow", linewidth=1.5))
        z = axes[1, col]
        z.imshow(img[top:top + size, left:left + size], interpolation="nearest")
        z.set_title(f"{title}, zoom: {size}x{size} px at ({left}, {top})")
    fig.tight_layout()
    return fig


def error_map(original, decoded, *, vmax: float | None = None):
    """|decoded - original|, mean over RGB, in [0, 1] units, with a colour bar."""
    a, b = _pair(original, decoded)
    err = np.abs(a - b).mean(-1)
    fig, axes = _figure(1, 1, a.shape, width=7.0)
    ax = axes[0, 0]
    shown = ax.imshow(err, cmap="magma", vmin=0.0,
                      vmax=vmax or max(float(np.quantile(err, 0.995)), 1e-6))
    ax.set_title(f"absolute error (mean {err.mean():.4f}, max {err.max():.3f})")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    return fig


def _ellipses(ax, params: P.GaussianParams, height: int, width: int, max_ellipses: int,
              colors) -> None:
    from matplotlib.collections import EllipseCollection

    xy = np.asarray(P.normalized_to_pixel(params.means, height, width))
    s = np.asarray(P.scale_activation(params.scales))
    theta = np.asarray(P.rotation_angle(params.rotation))[:, 0]
    keep = np.arange(xy.shape[0])
    if keep.size > max_ellipses:  # the largest ones first: they shape the picture
        keep = np.argsort(-s.prod(-1))[:max_ellipses]
    ax.add_collection(EllipseCollection(
        2 * s[keep, 0], 2 * s[keep, 1], np.degrees(theta[keep]), units="xy",
        offsets=xy[keep], offset_transform=ax.transData, facecolors="none",
        edgecolors=colors if isinstance(colors, str) else np.asarray(colors)[keep],
        linewidths=0.6))


def gaussians(image, params: P.GaussianParams, *, max_ellipses: int = 5000, color="red"):
    """The Gaussians as 1-sigma ellipses over the image: in `color`, or in their own colours
    with color="own"."""
    img = _image(image, "image")
    h, w = img.shape[:2]
    fig, axes = _figure(1, 1, img.shape, width=9.0)
    ax = axes[0, 0]
    ax.imshow(img)
    edge = np.clip(np.asarray(params.colors, np.float32), 0, 1) if color == "own" else color
    _ellipses(ax, params, h, w, max_ellipses, edge)
    shown = min(params.num, max_ellipses)
    ax.set_title(f"{params.num} Gaussians (1-sigma ellipses"
                 + (f", the {shown} largest" if shown < params.num else "") + ")")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    fig.tight_layout()
    return fig


def initialization(image, params: P.GaussianParams, info: dict, *, max_ellipses: int = 5000):
    """SmartSplat's initialization: the sampling weights w(x) of its tiles, the initial
    points (variational red, exclusion-uniform cyan) with 1-sigma ellipses, and the render
    of the initial Gaussians."""
    from smartsplat_jax import metrics
    from smartsplat_jax.init import tiles, variational
    from smartsplat_jax.render import render

    img = _image(image, "image")
    h, w = img.shape[:2]
    layout = tiles.tile_layout(h, w, info.get("tiles", {}).get("size", tiles.TILE_SIZE))
    wmap = np.asarray(variational.weight_map(img, layout))
    rendered = np.clip(np.asarray(render(params, h, w)), 0, 1)
    n_vs = int(info.get("num_variational", 0))
    fig, axes = _figure(1, 3, img.shape, width=15.0)
    shown = axes[0, 0].imshow(wmap, cmap="viridis")
    axes[0, 0].set_title("sampling weights w(x)")
    fig.colorbar(shown, ax=axes[0, 0], fraction=0.046, pad=0.02)
    ax = axes[0, 1]
    ax.imshow(img * 0.6 + 0.2)
    edge = np.array(["red"] * n_vs + ["cyan"] * (params.num - n_vs))
    _ellipses(ax, params, h, w, max_ellipses, edge)
    xy = np.asarray(P.normalized_to_pixel(params.means, h, w))
    ax.scatter(xy[:n_vs, 0], xy[:n_vs, 1], s=2, c="red", label=f"variational ({n_vs})")
    ax.scatter(xy[n_vs:, 0], xy[n_vs:, 1], s=2, c="cyan",
               label=f"uniform ({params.num - n_vs})")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.legend(loc="lower right", fontsize=8, markerscale=4)
    ax.set_title(f"initial points, N = {params.num}")
    axes[0, 2].imshow(rendered)
    axes[0, 2].set_title(f"initial render: PSNR {metrics.psnr(rendered, img):.2f} dB")
    fig.tight_layout()
    return fig


def _floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], np.float64)


def training_curves(history: dict, *, title: str = ""):
    """Loss (log scale) and PSNR (of the training render, and of the evaluations) against
    the step; the quantization-aware phase is shaded."""
    fig, ((ax_l, ax_p),) = _subplots(1, 2, (12, 4))
    steps = np.asarray(history["step"])
    ax_l.plot(steps, _floats(history["loss"]), ".-", markersize=4, color="tab:blue")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss (chunk mean)")
    ax_p.plot(steps, _floats(history["train_psnr"]), ".-", markersize=4, color="tab:orange",
              label="training render")
    ev = history.get("eval") or []
    if ev:
        ax_p.plot([e["step"] for e in ev], _floats(e["psnr"] for e in ev), "o",
                  color="tab:green", label="evaluation")
    ax_p.set_xlabel("step")
    ax_p.set_ylabel("PSNR (dB)")
    for ax in (ax_l, ax_p):
        if history.get("qat_start") is not None and steps.size:
            ax.axvspan(history["qat_start"], steps.max(), color="0.9",
                       label="quantization-aware" if ax is ax_p else None)
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    fig.suptitle(title or "training")
    fig.tight_layout()
    return fig


def rate_distortion(curves: dict[str, list[dict]], *, title: str = ""):
    """PSNR and MS-SSIM against bits per pixel (log axis), one line per codec.

    `curves`: {name: [{"bpp", "psnr", "ms_ssim"}, ...]}, e.g. `classic.rd_curve(...)` for
    JPEG / WebP / AVIF and the decoded .ssplat files' metrics at several CRs."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (axes,) = _subplots(1, 2, (12, 4.2))
    for (key, label), ax in zip((("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM")), axes):
        for name, pts in curves.items():
            pts = sorted((p for p in pts if p.get(key) is not None), key=lambda p: p["bpp"])
            if not pts:
                continue
            bold = name.lower().startswith("smartsplat")
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "o-" if bold else ".-",
                    label=name, linewidth=2.5 if bold else 1.2, zorder=3 if bold else 2)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:  # e.g. MS-SSIM of an image too small for its five scales
            ax.text(0.5, 0.5, f"no {label} values", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle(title or "rate-distortion at equal bytes")
    fig.tight_layout()
    return fig


def method_curves(histories: dict[str, dict], *, title: str = ""):
    """PSNR of the training render against the step and against training time (compilation
    included), one line per method: {name: history from `train.fit`}."""
    fig, ((ax_s, ax_t),) = _subplots(1, 2, (12, 4))
    for name, hist in histories.items():
        psnr = _floats(hist["train_psnr"])
        line, = ax_s.plot(hist["step"], psnr, ".-", markersize=4, label=name)
        seconds = _floats(hist.get("seconds") or [])
        if seconds.size == psnr.size:
            ax_t.plot(seconds, psnr, ".-", markersize=4, color=line.get_color(), label=name)
    ax_s.set_xlabel("step")
    ax_t.set_xlabel("training seconds")
    for ax in (ax_s, ax_t):
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or "methods compared")
    fig.tight_layout()
    return fig
