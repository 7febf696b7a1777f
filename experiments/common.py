"""Small helpers shared by the benchmark launchers."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from smartsplat_jax.io import atomic_write_bytes, json_bytes


def write_json(path: str, rows) -> None:
    """Writes `rows` as indented JSON to `path` (folders created, atomic); no-op if path is ''."""
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_bytes(path, json_bytes(rows))
    print(f"\nwrote {path}")


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def image_files(spec: str) -> list[str]:
    """The image files of a folder (by extension), or of a glob; sorted."""
    if os.path.isdir(spec):
        return sorted(str(p) for p in Path(spec).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return sorted(glob.glob(spec))


def resize_image(image, width: int, height: int):
    """[H, W, C] float image in [0, 1] resized to [height, width, C] (Lanczos per channel, in
    float, clipped to [0, 1]); the image itself when it already has that size."""
    import numpy as np
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    chans = [Image.fromarray(np.asarray(image[..., c], np.float32), mode="F")
             .resize((width, height), Image.LANCZOS) for c in range(image.shape[2])]
    return np.clip(np.stack([np.asarray(c) for c in chans], -1), 0.0, 1.0)


def gaussians_value(v: str):
    """A --gaussians flag value: "paper", "auto" or an integer N."""
    return int(v) if v.isdigit() else v


def devices_value(v: str):
    """A --devices entry: "D" -> D (D x 1 bands), "RxC" -> (R, C) (blocks), as
    `FitConfig.devices` takes them; None when it is neither (or a count is 0)."""
    parts = v.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 1 for p in parts):
        return None
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


# The FitConfig fields an `experiments.fit` configuration may set (configs/default.py).
TRAIN_FIELDS = ("loss", "lambda_l1", "lr_means", "lr_scales", "lr_colors", "lr_rotation",
                "qat_stages", "relocate_every", "chunk_steps", "eval_every",
                "checkpoint_every", "max_retries")


def training_overrides(c, height: int, width: int) -> dict:
    """The FitConfig fields that `experiments.fit` configuration `c` sets for an H x W
    image (its None fields keep the method's defaults), with the front-end's training
    resolved where `c` leaves it None: relocation and the positions' and scales' rates,
    `train.user_training(method, steps, height, width)` (for smartsplat, relocation every 500
    or steps // 4 steps, positions 0.3 px and scales 0.1 px per step; the baselines' own; the
    paper configuration sets the paper's)."""
    from smartsplat_jax.train import user_training

    overrides = {k: c[k] for k in TRAIN_FIELDS if c.get(k) is not None}
    for k, v in user_training(c.method, c.steps, height, width).items():
        overrides.setdefault(k, v)
    return overrides


def launcher_inputs(images: str | None, classic: list[str], crs: list[str], out_dir: str,
                    steps: int) -> tuple[list[str], list[float], Path]:
    """Checks the common benchmark flags; exits with a one-line error on a bad one.

    Returns:
      (image files, CRs as floats, the output folder, created).
    """
    from smartsplat_jax.pipeline import check_workdir

    if not images:
        sys.exit("error: --images is required (a folder or a glob)")
    files = image_files(images)
    if not files:
        sys.exit(f"error: --images={images!r} matches no image file")
    bad = [f for f in classic if f not in ("jpeg", "webp", "avif")]
    if bad:
        sys.exit(f"error: --classic has unknown codec(s) {bad}; choose from jpeg, webp, avif")
    if steps < 1:
        sys.exit(f"error: --steps={steps} must be >= 1")
    try:
        ratios = [float(c) for c in crs]
        out = check_workdir(out_dir)
    except ValueError:
        sys.exit(f"error: --crs={crs} must be numbers")
    except OSError as e:
        sys.exit(f"error: {e}")
    return files, ratios, out


def interruptible(main):
    """Wraps a launcher's main so that Ctrl-C (SIGINT) or SIGTERM ends it with one line on
    stderr and the shell's status (128 + the signal), not a traceback. Training inside it
    checkpoints first (`train.TrainingInterrupted`), so a rerun resumes."""
    import functools
    import signal
    import sys

    @functools.wraps(main)
    def run(argv):
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            what = str(e) or "stopped"
            print(f"interrupted: {what}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 128 + signal.SIGINT))
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run


def scan_ms(body, carry, *, steps: int, repeats: int) -> float:
    """Milliseconds per iteration of `carry = body(carry)` run `steps` times in one jitted
    lax.scan, as training runs its steps: the median over `repeats` calls after one warm-up
    call."""
    import time

    import jax
    import numpy as np

    run = jax.jit(lambda c: jax.lax.scan(lambda c, _: (body(c), None), c, None,
                                         length=steps)[0])
    jax.block_until_ready(run(carry))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(carry))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)) / steps


def nudge(params, grads, eps: float = 1e-12):
    """params - eps * grads: a step that keeps a scan's iterations dependent on each other."""
    import jax

    return jax.tree_util.tree_map(lambda p, g: p - eps * g.astype(p.dtype), params, grads)
