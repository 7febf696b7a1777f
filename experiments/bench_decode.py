"""Benchmark `smartsplat decompress` as a user runs it: wall time of the whole command,
with a cold and a warm persistent compilation cache, and with the cache off.

  python -m experiments.bench_decode --files='results/*.ssplat'
  python -m experiments.bench_decode --image=photo.png --cr=50 --steps=100   # makes the file

Each run is a fresh process (Python start-up, imports, decode, render, PNG write, exit), as
on a command line; its peak resident memory comes from the kernel (wait4). "cold" runs with
an empty cache folder, "warm" the median of `--repeats` runs after it, "off" with
SMARTSPLAT_CACHE_DIR=off. The decode's own seconds (what the command prints) are reported
beside the wall time.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments.common import interruptible, write_json

_FILES = flags.DEFINE_string("files", "", "Glob of .ssplat files.")
_IMAGE = flags.DEFINE_string("image", "", "Or an image to compress first (see --cr, --steps).")
_CR = flags.DEFINE_float("cr", 50.0, "Compression ratio of the file made from --image.")
_STEPS = flags.DEFINE_integer("steps", 100, "Training steps of the file made from --image.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm (and off) runs; the median is reported.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer backend for the decode.")
_OUT = flags.DEFINE_string("out", "results/bench_decode.json", "JSON output path.")


def _run(args: list[str], cache: str) -> tuple[float, float, float | None]:
    """(wall seconds, peak RSS MiB, the decode seconds printed) of one CLI process."""
    env = {**os.environ, "SMARTSPLAT_CACHE_DIR": cache}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "smartsplat_jax", *args], env=env,
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS (KiB on Linux)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"error: smartsplat {' '.join(args)} failed:\n{err.read()[-2000:]}")
        found = re.search(r"px, ([0-9.]+) s", out.read())
    return wall, usage.ru_maxrss / 1024.0, float(found.group(1)) if found else None


def _file_from_image(workdir: str) -> str:
    path = os.path.join(workdir, "bench.ssplat")
    subprocess.run([sys.executable, "-m", "smartsplat_jax", "compress", _IMAGE.value, path,
                    f"--cr={_CR.value}", f"--steps={_STEPS.value}", "--quiet"], check=True,
                   env={**os.environ, "SMARTSPLAT_CACHE_DIR": "off"})
    return path


def main(argv):
    del argv
    import jax

    from smartsplat_jax import codec

    with tempfile.TemporaryDirectory() as tmp:
        if _FILES.value:
            files = sorted(glob.glob(_FILES.value))
            if not files:
                sys.exit(f"error: --files={_FILES.value!r} matches no file")
        elif _IMAGE.value:
            files = [_file_from_image(tmp)]
        else:
            sys.exit("error: give --files=GLOB of .ssplat files or --image=PATH")
        rows = []
        for path in files:
            with open(path, "rb") as f:
                info = codec.read_info(f.read())
            cache = os.path.join(tmp, "cache")
            args = ["decompress", path, os.path.join(tmp, "out.png"), "--force",
                    f"--backend={_BACKEND.value}"]
            cold = _run(args, cache)
            warm = [_run(args, cache) for _ in range(_REPEATS.value)]
            off = [_run(args, "off") for _ in range(_REPEATS.value)]
            med = lambda runs, i: statistics.median(r[i] for r in runs)  # noqa: E731
            row = {"file": os.path.basename(path), "width": info.width, "height": info.height,
                   "num_gaussians": info.num_gaussians, "backend": _BACKEND.value,
                   "cold_wall_s": cold[0], "cold_decode_s": cold[2],
                   "warm_wall_s": med(warm, 0), "warm_decode_s": med(warm, 2),
                   "off_wall_s": med(off, 0), "off_decode_s": med(off, 2),
                   "peak_rss_mib": max(r[1] or 0 for r in [cold, *warm, *off]),
                   "repeats": _REPEATS.value, "device": jax.devices()[0].device_kind,
                   "jax_version": jax.__version__}
            rows.append(row)
            shutil.rmtree(cache, ignore_errors=True)  # the next file starts cold too
    print("\n| file | size | N | cold wall s | warm wall s | cache off wall s | decode s "
          "(cold / warm / off) | peak RSS MiB | device |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['width']}x{r['height']} | {r['num_gaussians']} | "
              f"{r['cold_wall_s']:.2f} | {r['warm_wall_s']:.2f} | {r['off_wall_s']:.2f} | "
              f"{r['cold_decode_s']} / {r['warm_decode_s']} / {r['off_decode_s']} | "
              f"{r['peak_rss_mib']:.0f} | {r['device']} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
