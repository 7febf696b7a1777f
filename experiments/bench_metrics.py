"""Benchmark: time and peak memory of psnr / ssim / ms_ssim on a synthetic image pair.

  python -m experiments.bench_metrics --size=16384 --out=results/bench_metrics.json

Each metric runs in its own subprocess so that its peak resident memory (ru_maxrss) is its
own; the two input images (2 x H x W x 3 float32) are included in that peak.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import app, flags

from experiments.common import interruptible, write_json

_SIZE = flags.DEFINE_integer("size", 4096, "Image side in pixels (square image).")
_METRICS = flags.DEFINE_list("metrics", ["psnr", "ssim", "ms_ssim"], "Metrics to time.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here (optional).")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one metric and print JSON.")


def _child(metric: str, size: int) -> dict:
    import numpy as np
    import jax

    from smartsplat_jax import metrics

    rng = np.random.default_rng(0)
    a = np.empty((size, size, 3), np.float32)
    b = np.empty_like(a)
    for r0 in range(0, size, 1024):  # fill in bands to keep the peak at the two images
        a[r0 : r0 + 1024] = rng.random(a[r0 : r0 + 1024].shape, dtype=np.float32)
        b[r0 : r0 + 1024] = np.clip(a[r0 : r0 + 1024] + 0.05 * rng.standard_normal(
            a[r0 : r0 + 1024].shape, dtype=np.float32), 0, 1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    value = getattr(metrics, metric)(a, b)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"metric": metric, "size": size, "value": value, "seconds": seconds,
            "peak_rss_gib": peak / 2**20, "inputs_gib": 2 * a.nbytes / 2**30,
            "rss_before_gib": base / 2**20, "device": str(jax.devices()[0]),
            "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.machine()}


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(_child(_CHILD.value, _SIZE.value)))
        return
    rows = []
    for metric in _METRICS.value:
        out = subprocess.run([sys.executable, "-m", "experiments.bench_metrics",
                              f"--child={metric}", f"--size={_SIZE.value}"],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"{metric} failed with exit code {out.returncode}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| metric | size | value | seconds | peak RSS GiB | inputs GiB | device |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['size']}x{r['size']} | {r['value']:.6f} | {r['seconds']:.1f} "
              f"| {r['peak_rss_gib']:.2f} | {r['inputs_gib']:.2f} | {r['device']} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
