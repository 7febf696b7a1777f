"""Compare methods over an image set: images x CRs x methods at a step budget.

  python -m experiments.benchmark --images='../shared/data/kodak/*.png' --crs=20 \
      --methods=smartsplat,random,gaussianimage-rs --steps=1000 --out_dir=results/bench_kodak

Each cell (image, CR, method) runs `run_fit` into out_dir/cells/<cell>/ and its metrics are
appended to out_dir/results.json. Cells already there are skipped, so a killed benchmark
continues where it stopped. Writes results.md (per cell and means per CR and method),
results.csv and results.json.

Each cell runs in its own process (so its memory is its own): peak_rss_gib is that process's
peak resident memory (from the kernel, wait4), device_peak_gib the accelerator's peak bytes in
use (None on CPU). The persistent compilation cache makes the later cells' compiles cheap.

Many processes, on one host or many (JAX's distributed runtime, `jax.distributed`): start
one per GPU (or host) with the same flags plus --coordinator=HOST:PORT (process 0's address)
--num_processes=P --process_id=I, or --coordinator=auto where JAX detects the cluster (SLURM,
Cloud TPU, ...). The (image, CR) groups are dealt round-robin (process I takes groups I,
I + P, ...); each process keeps its rows in out_dir/parts/results_I.json (resumable, and a
rerun with any process count skips every cell already in a part or in results.json); after a
barrier, process 0 merges them into results.md/csv/json. out_dir must be a folder all
processes see. The cells run in child processes, which inherit the environment: give each
process its GPU with CUDA_VISIBLE_DEVICES (SLURM: --gpus-per-task=1). The coordinating
processes themselves use only the CPU.

--relocate_every=K trains with relocation (`train.relocate`: every K steps the Gaussians
training made invisible move to where the error is; 0, the default, is the paper's method).
Only methods whose Gaussians are an additive set relocate (train.config.RELOCATABLE_METHODS);
other methods are refused. Its cells (suffix _r<K>) and rows (column relocate_every) are kept
apart from the paper's, so one out_dir can hold both, e.g. the baselines at 0 and SmartSplat
at 500.

Quality columns are those of the decoded .ssplat file (what a user gets); psnr_float is
before quantization and quant_drop their difference. With --classic=jpeg,webp,avif, each
(image, CR) also gets rows for those codecs at the same byte size as the first method's file
(quality searched to fit).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from absl import app, flags

from experiments.common import gaussians_value, interruptible, launcher_inputs

from smartsplat_jax import ImageError
from smartsplat_jax.io import atomic_write_bytes, json_bytes
from smartsplat_jax.pipeline import run_fit
from smartsplat_jax.train import METHODS, TrainingDiverged
from smartsplat_jax.train.config import RELOCATABLE_METHODS

_IMAGES = flags.DEFINE_string("images", None, "A folder, or a glob of image files.")
_CRS = flags.DEFINE_list("crs", ["20"], "Compression ratios.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Methods to compare.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per cell.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer backend.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OUT = flags.DEFINE_string("out_dir", "results/benchmark", "Output folder.")
_CLASSIC = flags.DEFINE_list("classic", [], "Classic codecs at equal bytes: jpeg,webp,avif.")
_GAUSSIANS = flags.DEFINE_string("gaussians", "paper", "paper | auto | N: how many "
                                 "Gaussians the budget buys (paper: comparable with the "
                                 "paper's tables; auto: pilot fits, gaussian_count).")
_RELOCATE = flags.DEFINE_integer("relocate_every", 0, "Move the Gaussians training made "
                                 "invisible to where the error is every this many steps "
                                 "(train.relocate; 0: never, the paper's method).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "Multi-process run: HOST:PORT of process 0 (with --num_processes and "
    "--process_id), or 'auto' to let jax.distributed detect the cluster. Default: one process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_CELL = flags.DEFINE_string("cell", None, "Internal: run one cell described by this JSON in "
                            "this process and print its metrics as JSON.")

COLUMNS = ("image", "cr", "method", "steps", "relocate_every", "num_gaussians",
           "file_gaussians", "file_bytes", "bytes_per_gaussian",
           "actual_cr", "psnr", "ssim", "ms_ssim", "psnr_float", "quant_drop", "decode_seconds",
           "init_psnr", "train_seconds", "it_per_s", "s_per_step", "peak_rss_gib",
           "device_peak_gib", "device")
_MEAN_COLUMNS = ("file_bytes", "bytes_per_gaussian", "actual_cr", "psnr", "ssim", "ms_ssim",
                 "psnr_float", "quant_drop", "decode_seconds", "init_psnr", "train_seconds",
                 "it_per_s", "s_per_step", "peak_rss_gib", "device_peak_gib")
def _key(r: dict) -> tuple:
    return (os.path.basename(r["image"]), float(r["cr"]), r["method"], int(r["steps"]),
            int(r.get("relocate_every") or 0))


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _means(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cr"], r["method"], r["steps"], r.get("relocate_every") or 0),
                          []).append(r)
    out = []
    for (cr, method, steps, every), rs in sorted(groups.items()):
        m = {"image": f"mean of {len(rs)}", "cr": cr, "method": method, "steps": steps,
             "relocate_every": every}
        for c in _MEAN_COLUMNS:
            vals = [r[c] for r in rs if r.get(c) is not None]
            m[c] = sum(vals) / len(vals) if vals else None
        out.append(m)
    return out


def write_reports(out: Path, rows: list[dict]) -> None:
    means = _means(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows + means:
        cells = [_fmt(os.path.basename(r[c]) if c == "image" else r.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows + means)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "results.json", json_bytes({"cells": rows, "means": means}))
    print("\n".join(lines))


def classic_rows(image_path: str, cr: float, target: dict, formats: list[str]) -> list[dict]:
    """Rows for classic codecs at (at most) the byte size of `target`'s .ssplat file."""
    from smartsplat_jax import load_image
    from smartsplat_jax.classic import available, measure_at_bytes

    image = load_image(image_path)
    h, w = image.shape[:2]
    rows = []
    for fmt in formats:
        if not available(fmt):
            print(f"  {fmt}: not supported by this Pillow build; skipped")
            continue
        m = measure_at_bytes(image, fmt, target["file_bytes"])
        row = {"image": image_path, "cr": cr, "method": f"{fmt}@equal-bytes", "steps": 0,
               "relocate_every": 0, "quality": m["quality"], "file_bytes": m["file_bytes"]}
        if m["file_bytes"] is not None:
            row.update(actual_cr=3 * h * w / m["file_bytes"], psnr=m["psnr"], ssim=m["ssim"],
                       ms_ssim=m["ms_ssim"])
        else:
            print(f"  {fmt}: even quality 1 exceeds {target['file_bytes']} bytes")
        rows.append(row)
    return rows


def run_cell(spec: dict) -> dict:
    """One cell in this process: `run_fit`'s metrics plus device_peak_gib."""
    import jax

    from smartsplat_jax import compile_cache

    compile_cache.enable()
    r = run_fit(spec["image"], spec["workdir"], cr=spec["cr"], method=spec["method"],
                steps=spec["steps"], backend=spec["backend"], seed=spec["seed"], resume=True,
                gaussians=gaussians_value(spec["gaussians"]), visualize=False, eval_every=0,
                checkpoint_every=0, chunk_steps=min(spec["steps"], 100),
                relocate_every=spec.get("relocate_every", 0))
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    r["device_peak_gib"] = None if peak is None else peak / 2**30
    return r


def _run_child(spec: dict) -> tuple[dict | None, float, str]:
    """(metrics or None, the child's peak RSS in GiB, its error text) of one cell run in a
    child process."""
    cmd = [sys.executable, "-m", "experiments.benchmark", f"--cell={json.dumps(spec)}"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS (KiB on Linux)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    peak = usage.ru_maxrss / 2**20
    if os.waitstatus_to_exitcode(status) != 0:
        return None, peak, (errors.strip().splitlines() or ["no output"])[-1]
    return json.loads(text.strip().splitlines()[-1]), peak, ""


def _processes() -> tuple[int, int]:
    """(this process's index, the process count): (0, 1) unless --coordinator starts JAX's
    distributed runtime (on the CPU: the cells' children get the accelerators)."""
    if _COORDINATOR.value is None:
        if _NUM_PROCESSES.value not in (None, 1) or _PROCESS_ID.value not in (None, 0):
            sys.exit("error: --num_processes/--process_id need --coordinator=HOST:PORT (or auto)")
        return 0, 1
    import jax

    jax.config.update("jax_platforms", "cpu")
    if _COORDINATOR.value == "auto":
        jax.distributed.initialize()
    else:
        n, i = _NUM_PROCESSES.value, _PROCESS_ID.value
        if n is None or i is None or n < 1 or not 0 <= i < n:
            sys.exit(f"error: --coordinator needs --num_processes >= 1 and 0 <= --process_id < "
                     f"--num_processes (got {n} and {i})")
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=n,
                                   process_id=i)
    return jax.process_index(), jax.process_count()


def _load_rows(out: Path) -> list[dict]:
    """Every finished cell: results.json's, then the parts' (later duplicates dropped)."""
    rows, seen = [], set()
    paths = [out / "results.json", *sorted((out / "parts").glob("results_*.json"))]
    for path in paths:
        if path.exists():
            for r in json.loads(path.read_text())["cells"]:
                if _key(r) not in seen:
                    seen.add(_key(r))
                    rows.append(r)
    return rows


def main(argv):
    del argv
    if _CELL.value is not None:  # a child: one cell, its metrics on the last stdout line
        try:
            r = run_cell(json.loads(_CELL.value))
        except (ImageError, ValueError, OSError, TrainingDiverged) as e:
            sys.exit(f"error: {e}")
        print(json_bytes(r, indent=None).decode())
        return
    images, crs, out = launcher_inputs(_IMAGES.value, _CLASSIC.value, _CRS.value, _OUT.value,
                                       _STEPS.value)
    bad = [m for m in _METHODS.value if m not in METHODS]
    if bad:
        sys.exit(f"error: unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    every = _RELOCATE.value
    if every < 0:
        sys.exit(f"error: --relocate_every={every} must be an integer >= 0")
    fixed = [m for m in _METHODS.value if m not in RELOCATABLE_METHODS]
    if every and fixed:
        sys.exit(f"error: --relocate_every={every} needs methods whose Gaussians are an "
                 f"additive set ({', '.join(RELOCATABLE_METHODS)}), not {', '.join(fixed)}; "
                 "run those with --relocate_every=0 (into the same --out_dir to compare)")
    index, count = _processes()
    rows = _load_rows(out)
    done = {_key(r) for r in rows}
    part = out / "parts" / f"results_{index}.json"
    # This process's rows (its part file, kept across reruns).
    mine: list[dict] = json.loads(part.read_text())["cells"] if count > 1 and part.exists() else []

    def save():
        if count == 1:
            write_reports(out, rows)
        else:  # this process's part; process 0 merges the parts at the end
            part.parent.mkdir(exist_ok=True)
            atomic_write_bytes(part, json_bytes({"cells": mine}))

    groups = [(image, cr) for image in images for cr in crs]
    if count > 1:
        print(f"process {index} of {count}: {len(groups[index::count])} of {len(groups)} "
              "(image, CR) groups", flush=True)
    for image, cr in groups[index::count]:
        for method in _METHODS.value:
            key = (os.path.basename(image), cr, method, _STEPS.value, every)
            if key in done:
                print(f"skip (done): {key}")
                continue
            cell = out / "cells" / (f"{Path(image).stem}_cr{cr:g}_{method}_{_STEPS.value}"
                                    + (f"_r{every}" if every else ""))
            print(f"run: {key}", flush=True)
            r, peak, error = _run_child({
                "image": image, "workdir": str(cell), "cr": cr, "method": method,
                "steps": _STEPS.value, "backend": _BACKEND.value, "seed": _SEED.value,
                "gaussians": _GAUSSIANS.value, "relocate_every": every})
            if r is None:
                print(f"  failed: {error}")
                continue
            r["peak_rss_gib"] = peak
            r["s_per_step"] = None if not r.get("it_per_s") else 1.0 / r["it_per_s"]
            r["quant_drop"] = r["psnr_float"] - r["psnr"]
            rows.append(r)
            mine.append(r)
            done.add(key)
            save()
        first = next((r for r in rows if _key(r)[:2] == (os.path.basename(image), cr)
                      and r["method"] in METHODS), None)
        todo = [f for f in _CLASSIC.value
                if (os.path.basename(image), cr, f"{f}@equal-bytes", 0, 0) not in done]
        if first is not None and todo:
            for r in classic_rows(image, cr, first, todo):
                rows.append(r)
                mine.append(r)
                done.add(_key(r))
            save()
    if count == 1:
        write_reports(out, rows)
        return
    save()
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("smartsplat_jax benchmark: every part written")
    if index == 0:
        write_reports(out, _load_rows(out))


if __name__ == "__main__":
    app.run(interruptible(main))
