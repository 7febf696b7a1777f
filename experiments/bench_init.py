"""Benchmark SmartSplat's initialization: time per stage, compile time, memory, init PSNR.

  python -m experiments.bench_init --images='../shared/data/hires/*.png' --crs=50,200
  python -m experiments.bench_init --size=16384x16384 --crs=50      # the demo photo resized

Each (image, CR) runs in its own subprocess so its peak resident memory is its own. The
first call (which compiles) and the median of the next `repeats` calls are reported
separately, with seconds per stage of the last call, and the PSNR of the rendered
initialization next to a random initialization with the same N (uniform means, scales
s_base, colours read at the means).
"""

from __future__ import annotations

import glob
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from experiments.common import interruptible, resize_image, write_json

_IMAGES = flags.DEFINE_string("images", "", "Glob of image files (default: the demo image).")
_CRS = flags.DEFINE_list("crs", ["50", "200"], "Compression ratios.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the first.")
_OUT = flags.DEFINE_string("out", "results/bench_init.json", "JSON output path.")
_SIZE = flags.DEFINE_string("size", "", "WIDTHxHEIGHT: resize every image to this first "
                            "(Lanczos, up or down; '' keeps its size).")
_CHILD = flags.DEFINE_string("child", "", "Internal: 'path@cr' to run in this process.")


def _parse_size(v: str) -> tuple[int, int] | None:
    """--size 'WxH' -> (W, H); '' -> None; exits with a one-line error otherwise."""
    if not v:
        return None
    parts = v.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= 65_536 for p in parts):
        sys.exit(f"error: --size={v!r} must be WIDTHxHEIGHT with sides in [1, 65536]")
    return int(parts[0]), int(parts[1])


def _load(path: str):
    """The image at `path`, resized to --size when given: [H, W, 3] float32 in [0, 1]."""
    from smartsplat_jax import load_image

    image = load_image(path)
    size = _parse_size(_SIZE.value)
    return image if size is None else resize_image(image, *size)


def _child(spec: str) -> dict:
    import jax
    import numpy as np

    from smartsplat_jax import metrics, num_gaussians
    from smartsplat_jax.init import random_init, smart_init
    from smartsplat_jax.render import render

    path, cr = spec.rsplit("@", 1)
    image = _load(path)
    h, w = image.shape[:2]
    n = num_gaussians(h, w, float(cr))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    params, info = smart_init(jax.random.PRNGKey(0), image, n)
    first = time.perf_counter() - t0
    times = []
    for i in range(_REPEATS.value):
        t0 = time.perf_counter()
        params, info = smart_init(jax.random.PRNGKey(0), image, n)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rand, _ = random_init(jax.random.PRNGKey(0), image, n)
    return {
        "image": os.path.basename(path), "width": w, "height": h, "cr": float(cr), "n": n,
        "first_call_s": first, "median_s": float(np.median(times)) if times else None,
        "stages_s": info["seconds"], "exclusion": info["exclusion"],
        "peak_rss_gib": peak / 2**20, "rss_before_init_gib": rss0 / 2**20,
        "psnr_smart_init": metrics.psnr(render(params, h, w), image),
        "psnr_random_init": metrics.psnr(render(rand, h, w), image),
        "device": str(jax.devices()[0].device_kind), "jax_version": jax.__version__,
    }


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(_child(_CHILD.value)))
        return
    if _IMAGES.value:
        paths = sorted(glob.glob(_IMAGES.value))
        if not paths:
            sys.exit(f"error: --images={_IMAGES.value!r} matches no file")
    else:
        from smartsplat_jax import DEMO_IMAGE
        paths = [str(DEMO_IMAGE)]
    _parse_size(_SIZE.value)
    rows = []
    for path in paths:
        for cr in _CRS.value:
            out = subprocess.run([sys.executable, "-m", "experiments.bench_init",
                                  f"--child={path}@{cr}", f"--repeats={_REPEATS.value}",
                                  f"--size={_SIZE.value}"],
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"error: {path} at CR {cr} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| image | size | CR | N | first call s | median s | variational | uniform | knn "
          "| colours | peak RSS GiB | init PSNR | random PSNR | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["stages_s"]
        print(f"| {r['image']} | {r['width']}x{r['height']} | {r['cr']:g} | {r['n']} | "
              f"{r['first_call_s']:.2f} | "
              f"{'n/a' if r['median_s'] is None else format(r['median_s'], '.3f')} | "
              f"{st['variational_s']:.3f} | "
              f"{st['uniform_s']:.3f} | {st['knn_s']:.3f} | {st['colors_s']:.3f} | "
              f"{r['peak_rss_gib']:.2f} | {r['psnr_smart_init']:.2f} | "
              f"{r['psnr_random_init']:.2f} | {r['device']} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
