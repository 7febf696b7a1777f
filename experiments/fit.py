"""Compress one image with SmartSplat (or a baseline) and write every output.

  python -m experiments.fit                                  # the demo image, CPU-friendly
  python -m experiments.fit --image=photo.png --cr=50 --steps=5000 --workdir=results/photo
  python -m experiments.fit --config=experiments/configs/paper.py --image=photo.png
  python -m experiments.fit --config.lambda_l1=0.8          # any config field
  python -m experiments.fit --workdir=results/photo           # rerun: resumes a killed run
  python -m experiments.fit --workdir=results/photo --noresume # start over

Ctrl-C (SIGINT) or SIGTERM finishes the current chunk, writes a checkpoint and exits; the
same command resumes. A workdir holding another run's checkpoints (another image, CR,
method, seed or training config) is refused with a clear error. Compiled programs are cached
across runs (`smartsplat_jax.compile_cache`; SMARTSPLAT_CACHE_DIR=off turns it off).

Outputs (in --workdir): image.ssplat (the compressed file), recon.png (the file decoded),
params.npz (float parameters), metrics.json, history.json, curve.png, init_weights.png,
init_points.png, init_render.png, checkpoints/.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from smartsplat_jax import DEMO_IMAGE, ImageError, compile_cache
from smartsplat_jax.io import image_size
from smartsplat_jax.pipeline import run_fit
from smartsplat_jax.train import TrainingDiverged, TrainingInterrupted

from experiments.common import devices_value, training_overrides

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Configuration file (see experiments/configs).")
_IMAGE = flags.DEFINE_string("image", None, "Image file (default: the bundled demo image).")
_CR = flags.DEFINE_float("cr", None, "Target compression ratio.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps.")
_METHOD = flags.DEFINE_string("method", None, "smartsplat | random | gaussianimage-rs | "
                              "gaussianimage-cholesky | lig | imagegs | 3dgs.")
_BACKEND = flags.DEFINE_string("backend", None, "Renderer backend: auto | xla | pallas | reference.")
_SEED = flags.DEFINE_integer("seed", None, "PRNG seed of the initialization.")
_GAUSSIANS = flags.DEFINE_string("gaussians", None, "paper | auto | N: how many Gaussians "
                                 "the budget buys: the paper's N, the N whose pilot fit "
                                 "decodes best (smartsplat_jax.gaussian_count), or N.")
_PILOT = flags.DEFINE_integer("auto_pilot_steps", None,
                              "With --gaussians=auto: steps of each pilot (default: --steps, "
                              "exact; fewer is cheaper but favours more Gaussians).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_RESUME = flags.DEFINE_bool("resume", True, "Continue from the workdir's newest checkpoint "
                            "of the same run (--noresume: delete them and start over).")
_DEVICES = flags.DEFINE_string("devices", None,
                               "D: train on D devices, the image cut into one band of rows "
                               "per device; RxC (e.g. 2x2): on an R x C mesh, the image cut "
                               "into blocks (train.sharded); default 1.")
_QAT = flags.DEFINE_integer("qat_steps", None,
                            "How many of the steps, at the end, train through the file's "
                            "quantizer (default 2 %, 20 to 1,000).")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; use --flag=value")
    compile_cache.enable()  # a rerun loads the compiled step ($SMARTSPLAT_CACHE_DIR=off: no)
    c = _CONFIG.value
    for name, flag in (("image", _IMAGE), ("cr", _CR), ("steps", _STEPS), ("method", _METHOD),
                       ("backend", _BACKEND), ("seed", _SEED), ("workdir", _WORKDIR),
                       ("gaussians", _GAUSSIANS)):
        if flag.value is not None:
            c[name] = flag.value
    image = c.image or str(DEMO_IMAGE)
    gaussians = int(c.gaussians) if str(c.gaussians).isdigit() else c.gaussians
    devices = None
    if _DEVICES.value is not None:
        devices = devices_value(_DEVICES.value)
        if devices is None:
            sys.exit(f"error: --devices={_DEVICES.value!r} must be D or RxC (e.g. 4 or 2x2)")
    try:
        overrides = training_overrides(c, *image_size(image))
        if devices is not None:
            overrides["devices"] = devices
        result = run_fit(image, c.workdir, cr=c.cr, method=c.method, steps=c.steps,
                         backend=c.backend, seed=c.seed, gaussians=gaussians,
                         resume=_RESUME.value, auto_pilot_steps=_PILOT.value,
                         qat_steps=_QAT.value, **overrides)
    except (ImageError, ValueError, OSError, TrainingDiverged) as e:
        sys.exit(f"error: {e}")
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted (no checkpoint written: stopped before training)", file=sys.stderr)
        sys.exit(130)
    ms = "n/a" if result["ms_ssim"] is None else f"{result['ms_ssim']:.4f}"
    print(f"{result['method']} on {os.path.basename(image)} ({result['width']}x{result['height']}), "
          f"CR {result['cr']:g}, N={result['num_gaussians']}, {result['steps']} steps: "
          f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, MS-SSIM {ms} "
          f"(float {result['psnr_float']:.2f} dB, init {result['init_psnr']:.2f} dB); "
          f"train {result['train_seconds']:.1f} s")
    search = result.get("gaussians_search")
    if search:
        tried = ", ".join(f"N={t['n']}: {t['psnr']:.2f} dB" for t in search["trials"])
        print(f"gaussians=auto chose N={search['n']} (paper {search['n_paper']}) from "
              f"{len(search['trials'])} pilots of {search['pilot_steps']} steps ({tried})")
    over = "" if result["fits_budget"] else " (over budget: the image is too small for this CR)"
    print(f"file: {result['file_bytes']} bytes, {result['file_gaussians']} Gaussians "
          f"({result['num_gaussians'] - result['file_gaussians']} invisible ones left out), "
          f"{result['bytes_per_gaussian']:.2f} B/Gaussian, real CR {result['actual_cr']:.2f}{over}")
    px = 0.5 * max(result["width"], result["height"]) * result["lr_means"]
    print(f"positions' rate {result['lr_means']:.3g} per step ({px:.2g} px along the longer "
          f"side; --config.lr_means=1e-4 is the paper's), scales' rate "
          f"{result['lr_scales']:.3g} px per step (--config.lr_scales=0.05 is the paper's), "
          f"loss {result['loss']}")
    if result.get("relocate_every"):
        print(f"relocation every {result['relocate_every']} steps: {result['relocated']} "
              "invisible Gaussians moved to where the error was (0 turns it off: "
              "--config.relocate_every=0, the paper's training)")
    print(f"outputs in {os.path.abspath(c.workdir)}: image.ssplat, recon.png, metrics.json, "
          "curve.png, params.npz, init_*.png")


if __name__ == "__main__":
    app.run(main)
