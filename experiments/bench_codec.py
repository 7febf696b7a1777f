"""The codec benchmark: what the .ssplat file keeps of training, and how it compares at equal
bytes with JPEG, WebP and AVIF.

  python -m experiments.bench_codec --images='../shared/data/kodak/*.png' --crs=20 \
      --steps=1000 --out_dir=results/codec_kodak
  python -m experiments.bench_codec --images=../shared/data/hires --crs=50,200 --max_side=2048

For every image and CR it compresses the image (SmartSplat, quantization-aware training, rate
control; `--gaussians=paper` by default) and reports: the float PSNR before quantization, the
decoded file's PSNR / SSIM / MS-SSIM and the drop, the file's bytes and the share of the
budget used, N and bytes per Gaussian, encode and decode times, and each classic codec at (at
most) the same bytes. With --float_reference it also trains float-only for the same steps
(the PSNR a float model reaches, for the drop against it); --relocate_every trains with
relocation (`train.relocate`), --lr_means=auto and --lr_scales=auto with the positions' and
the scales' rates of `smartsplat compress` (`train.default_lr_means`, `default_lr_scales`),
--loss=l2 with the mean squared error: their cells, rows and means are kept apart from the
paper's training, which is the default.
Per image it draws the rate-distortion curves (PSNR and MS-SSIM against bits per pixel; the
classic codecs over their quality range, SmartSplat at the CRs run) as rd_<image>.png.

Writes results.json (resumable: cells already there are skipped), results.md and the plots
in --out_dir.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments.common import gaussians_value, interruptible, launcher_inputs, resize_image

_IMAGES = flags.DEFINE_string("images", None, "A folder, or a glob of image files.")
_CRS = flags.DEFINE_list("crs", ["20", "50", "100", "200", "500"], "Compression ratios.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per cell.")
_GAUSSIANS = flags.DEFINE_string("gaussians", "paper", "paper | auto | N (see "
                                 "codec.rate.gaussians_for_budget).")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer backend.")
_RELOCATE = flags.DEFINE_integer("relocate_every", 0, "Move the Gaussians training made "
                                 "invisible to where the error is every this many steps "
                                 "(train.relocate; 0: never, the paper's method).")
_LR_MEANS = flags.DEFINE_string("lr_means", "paper", "The positions' rate: paper (1e-4 "
                                "normalized units per step), auto (`smartsplat compress`'s: "
                                "0.3 px per step along the longer side, at least 1e-4; "
                                "train.default_lr_means) or a number.")
_LR_SCALES = flags.DEFINE_string("lr_scales", "paper", "The scales' rate: paper (5e-2 px per "
                                 "step), auto (`smartsplat compress`'s: 0.1 px per step; "
                                 "train.default_lr_scales) or a number.")
_LOSS = flags.DEFINE_enum("loss", "smartsplat", ["smartsplat", "l2"],
                          "What training minimises: smartsplat (L1 and 1 - SSIM, the paper's) "
                          "or l2 (the MSE; `smartsplat compress --loss l2`).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_CLASSIC = flags.DEFINE_list("classic", ["jpeg", "webp", "avif"], "Classic codecs to compare.")
_MAX_SIDE = flags.DEFINE_integer("max_side", 0, "Downscale larger images to this long side "
                                 "first (Lanczos; 0: full size). The note says so.")
_FLOAT_REF = flags.DEFINE_bool("float_reference", False,
                               "Also train float-only for the same steps.")
_OUT = flags.DEFINE_string("out_dir", "results/bench_codec", "Output folder.")

_QUALITIES = (2, 5, 10, 20, 30, 45, 60, 75, 90)
COLUMNS = ("image", "size", "cr", "steps", "relocate_every", "lr_means", "lr_scales", "loss",
           "num_gaussians", "file_gaussians", "file_bytes", "budget_used", "bytes_per_gaussian",
           "psnr_float", "psnr_float_ref", "psnr", "drop", "ssim", "ms_ssim", "jpeg_psnr",
           "webp_psnr", "avif_psnr", "encode_s", "decode_s", "train_s", "rollbacks",
           "nonfinite_grad_chunks")


def _working_image(path: str, out: Path) -> str:
    """The image the cell compresses: the file itself, or a downscaled PNG copy (8-bit)."""
    from smartsplat_jax import load_image, save_image

    if not _MAX_SIDE.value:
        return path
    img = load_image(path)
    h, w = img.shape[:2]
    if max(h, w) <= _MAX_SIDE.value:
        return path
    dst = out / "images" / (Path(path).stem + f"_{_MAX_SIDE.value}.png")
    if not dst.exists():
        s = _MAX_SIDE.value / max(h, w)
        dst.parent.mkdir(parents=True, exist_ok=True)
        save_image(dst, resize_image(img, round(w * s), round(h * s)))
    return str(dst)


def rate_for(name: str, setting: str, height: int, width: int) -> float:
    """The rate `name` ("lr_means" or "lr_scales") of a --lr_means / --lr_scales setting for an
    H x W image: paper (`config_for_method`), auto (`smartsplat compress`'s,
    `train.user_training`) or a number; ValueError naming a bad one."""
    from smartsplat_jax.train import config_for_method, user_training

    if setting == "paper":
        return getattr(config_for_method("smartsplat"), name)
    if setting == "auto":
        return user_training("smartsplat", _STEPS.value, height, width)[name]
    try:
        return float(setting)
    except ValueError:
        raise ValueError(f"--{name}={setting!r} must be paper, auto or a number") from None


def run_cell(image_path: str, cr: float, out: Path) -> dict:
    """Compresses one image at one CR and measures it against the classic codecs."""
    import jax

    from smartsplat_jax import codec, load_image, metrics
    from smartsplat_jax.classic import available, measure_at_bytes
    from smartsplat_jax.pipeline import run_fit
    from smartsplat_jax.render import render

    gaussians = gaussians_value(_GAUSSIANS.value)
    every, rate, srate, loss = _RELOCATE.value, _LR_MEANS.value, _LR_SCALES.value, _LOSS.value
    image = load_image(image_path)
    h, w = image.shape[:2]
    cell = out / "cells" / (f"{Path(image_path).stem}_cr{cr:g}_{_STEPS.value}"
                            + (f"_r{every}" if every else "")
                            + (f"_m{rate}" if rate != "paper" else "")
                            + (f"_s{srate}" if srate != "paper" else "")
                            + (f"_{loss}" if loss != "smartsplat" else ""))
    m = run_fit(image_path, cell, cr=cr, steps=_STEPS.value, backend=_BACKEND.value,
                seed=_SEED.value, gaussians=gaussians, resume=True, visualize=False,
                eval_every=0, checkpoint_every=0, chunk_steps=min(_STEPS.value, 100),
                progress=False, relocate_every=every,
                lr_means=rate_for("lr_means", rate, h, w),
                lr_scales=rate_for("lr_scales", srate, h, w), loss=loss)
    data = (cell / "image.ssplat").read_bytes()
    t0 = time.perf_counter()
    params, _, _ = codec.decode(data)
    jax.block_until_ready(render(params, h, w, backend=_BACKEND.value))
    decode_s = time.perf_counter() - t0
    row = {"image": os.path.basename(image_path), "size": f"{w}x{h}", "cr": cr,
           "steps": _STEPS.value, "relocate_every": _RELOCATE.value, "lr_means": rate,
           "lr_means_used": m["lr_means"], "lr_scales": srate,
           "lr_scales_used": m["lr_scales"], "loss": loss,
           "num_gaussians": m["num_gaussians"],
           "file_gaussians": m.get("file_gaussians"), "file_bytes": m["file_bytes"],
           "budget_bytes": m["budget_bytes"],
           "budget_used": m["budget_used"], "bpp": 8 * m["file_bytes"] / (h * w),
           "bytes_per_gaussian": m["bytes_per_gaussian"], "psnr_float": m["psnr_float"],
           "psnr": m["psnr"], "drop": m["psnr_float"] - m["psnr"], "ssim": m["ssim"],
           "ms_ssim": m["ms_ssim"], "encode_s": m["encode_seconds"], "decode_s": decode_s,
           "train_s": m["train_seconds"], "device": m["device"], "quant": m["quant"],
           "rollbacks": m.get("rollbacks"),
           "nonfinite_grad_chunks": m.get("nonfinite_grad_chunks")}
    if _FLOAT_REF.value:
        from smartsplat_jax.train import config_for_method, fit, initialize

        p0, _ = initialize("smartsplat", jax.random.PRNGKey(_SEED.value), image,
                           m["num_gaussians"])
        cfg = config_for_method("smartsplat", steps=_STEPS.value, backend=_BACKEND.value,
                                lr_means=m["lr_means"], lr_scales=m["lr_scales"], loss=loss,
                                eval_every=0, checkpoint_every=0,
                                chunk_steps=min(_STEPS.value, 100))
        pf, _ = fit(image, p0, cfg, progress=False)
        row["psnr_float_ref"] = metrics.psnr(render(pf, h, w, backend=_BACKEND.value), image)
        row["drop_vs_float_ref"] = row["psnr_float_ref"] - row["psnr"]
    for fmt in _CLASSIC.value:
        if available(fmt):
            c = measure_at_bytes(image, fmt, m["file_bytes"])
            for k in ("psnr", "ms_ssim", "file_bytes", "quality"):
                row[f"{fmt}_{k}"] = c[k]
    return row


# What a row's Gaussians were trained with (`_training`): rows that differ in any of these
# are kept apart (cells, skips, means, curves).
_TRAINING_FIELDS = ("steps", "relocate_every", "lr_means", "lr_scales", "loss")


def _training(r: dict) -> tuple[int, int, str, str, str]:
    """A row's `_TRAINING_FIELDS` (rows written before a field existed read as its default:
    no relocation, the paper's rates and loss)."""
    return (int(r["steps"]), int(r.get("relocate_every") or 0),
            str(r.get("lr_means", "paper")), str(r.get("lr_scales", "paper")),
            str(r.get("loss", "smartsplat")))


def _flags_training() -> tuple[int, int, str, str, str]:
    """The `_TRAINING_FIELDS` the flags of this run train with."""
    return (_STEPS.value, _RELOCATE.value, _LR_MEANS.value, _LR_SCALES.value, _LOSS.value)


def _plot(image_path: str, rows: list[dict], out: Path) -> None:
    """rd_<image>.png: PSNR and MS-SSIM against bpp, all codecs."""
    from PIL import Image

    from smartsplat_jax import load_image
    from smartsplat_jax.classic import available, rd_curve
    from smartsplat_jax.viz import curves_plot

    image = load_image(image_path)
    name = os.path.basename(image_path)
    groups = {}  # one curve per training (steps, relocation, rates), each over its CRs
    for r in sorted((r for r in rows if r["image"] == name), key=lambda r: r["bpp"]):
        groups.setdefault(_training(r), []).append(r)
    if not groups:
        return
    series = {}
    for fmt in _CLASSIC.value:
        if available(fmt):
            series[fmt.upper()] = rd_curve(image, fmt, _QUALITIES)
    panels = []
    for key, label in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM")):
        curves = {}
        for (steps, every, rate, srate, loss), ours in sorted(groups.items()):
            tag = "" if len(groups) == 1 else f", {steps} steps" + (
                f", relocation every {every}" if every else "") + (
                f", positions' rate {rate}" if rate != "paper" else "") + (
                f", scales' rate {srate}" if srate != "paper" else "") + (
                f", {loss} loss" if loss != "smartsplat" else "")
            curves[f"SmartSplat (.ssplat){tag}"] = (
                [r["bpp"] for r in ours],
                [r[key] if r[key] is not None else float("nan") for r in ours])
        for fmt, pts in series.items():
            curves[fmt] = ([p["bpp"] for p in pts],
                           [p[key] if p[key] is not None else float("nan") for p in pts])
        panels.append(curves_plot(curves, title=f"{name}: {label}", xlabel="bits per pixel",
                                  ylabel=label, log_x=True))
    im = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), (255, 255, 255))
    y = 0
    for p in panels:
        im.paste(p, (0, y))
        y += p.height
    from smartsplat_jax.io import atomic_write_bytes

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(out / f"rd_{Path(image_path).stem}.png", buf.getvalue())


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def write_reports(out: Path, rows: list[dict]) -> None:
    from smartsplat_jax.io import atomic_write_bytes, json_bytes

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |")
    means = []  # per CR and training: other step counts, relocation or rates kept apart
    for cr, *training in sorted({(r["cr"], *_training(r)) for r in rows}):
        rs = [r for r in rows if r["cr"] == cr and list(_training(r)) == training]
        m = {"image": f"mean of {len(rs)}", "cr": cr,
             **dict(zip(_TRAINING_FIELDS, training))}
        for c in COLUMNS[COLUMNS.index(_TRAINING_FIELDS[-1]) + 1:]:
            vals = [r[c] for r in rs if isinstance(r.get(c), (int, float))]
            m[c] = sum(vals) / len(vals) if len(vals) == len(rs) and vals else None
        means.append(m)
        lines.append("| " + " | ".join(_fmt(m.get(c)) for c in COLUMNS) + " |")
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out / "results.json", json_bytes({"cells": rows, "means": means}))
    print("\n".join(lines), flush=True)


def main(argv):
    del argv
    from smartsplat_jax import ImageError
    from smartsplat_jax.train import TrainingDiverged

    try:
        rate_for("lr_means", _LR_MEANS.value, 1, 1)  # a bad setting fails before any work
        rate_for("lr_scales", _LR_SCALES.value, 1, 1)
    except ValueError as e:
        sys.exit(f"error: {e}")
    images, crs, out = launcher_inputs(_IMAGES.value, _CLASSIC.value, _CRS.value, _OUT.value,
                                       _STEPS.value)
    path = out / "results.json"
    rows = json.loads(path.read_text())["cells"] if path.exists() else []
    for image in images:
        work = _working_image(image, out)
        for cr in crs:
            key = (os.path.basename(work), cr, *_flags_training())
            if any((r["image"], r["cr"], *_training(r)) == key for r in rows):
                print(f"skip (done): {key}", flush=True)
                continue
            print(f"run: {key}", flush=True)
            try:
                rows.append(run_cell(work, cr, out))
            except (ImageError, ValueError, OSError, TrainingDiverged) as e:
                print(f"  failed: {e}", flush=True)
                continue
            write_reports(out, rows)
        _plot(work, rows, out)
    write_reports(out, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
