"""Run the project's benchmarks as one batch, each in its own process under a time limit.

  python -m experiments.bench_suite --profile=gpu --out_dir=results/gpu --budget_s=540
  python -m experiments.bench_suite --profile=cpu --out_dir=results/cpu
  python -m experiments.bench_suite --profile=gpu --list          # what it would run

A profile is an ordered list of parts, most important first. Each part is one launcher of
`experiments/` (or pytest) run as a subprocess with its own time limit; its output goes to
`<out_dir>/<part>.log` and its JSON to `<out_dir>/<part>.json`. A part that fails or runs
out of time is recorded as such and the next one runs, so one slow size never costs the
figures of the others. With `--budget_s`, no part runs past the budget: each gets
min(its own limit, what is left), and parts that would start with less than
`--min_part_s` left are skipped. Inputs the parts need (the demo photo resized to 2048x1365)
are written to `<out_dir>/inputs/` first.

At the end it prints one table (part, status, wall seconds) and the tables the parts
printed, and writes `<out_dir>/suite.json`: every part's status, command, wall time and
parsed JSON rows.

Profiles:
  gpu    the speed targets of the README's benchmark section on one GPU: the training-step
         breakdown at 2048x1365 and 7680x4320 CR 50 (xla and pallas) and at 16384^2 CR 200
         (pallas), `smartsplat decompress` of a 2048x1365 file (cold, warm and no cache),
         initialization at 2048x1365 and 16384^2 CR 50, the quantization-aware step rate, and
         the Pallas kernel tests. Its limits add up to more than 540 s: with --budget_s=540
         (one 10-minute call) the parts at the end run only if time is left.
  cpu    the same questions at CPU sizes (the quick start's scene, 2048x1365, 256^2).
  gpu_codec
         the codec's targets on one GPU (`bench_codec`, resumable: a part cut short keeps its
         finished cells): the float-to-file drop after the paper's 50,000 steps on a
         1134x756 photo at CR 100, then the decoded file against JPEG / WebP / AVIF at equal
         bytes on the hires photos up to 2048 px (the PNGs of --data_dir/hires) after
         10,000 steps at CR 200 and CR 100 with `smartsplat compress`'s training, and at
         CR 200 with the paper's. Needs the photographs (--data_dir).
  smoke  tiny sizes, seconds per part (the suite's own test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments.common import interruptible, resize_image, write_json

_PROFILE = flags.DEFINE_enum("profile", "cpu", ["gpu", "cpu", "gpu_codec", "smoke"],
                              "Which parts to run.")
_OUT = flags.DEFINE_string("out_dir", "results/bench_suite", "Output folder.")
_ONLY = flags.DEFINE_list("only", [], "Run only these parts of the profile (names).")
_BUDGET = flags.DEFINE_float("budget_s", 0.0, "Wall-clock budget of the whole suite in "
                             "seconds (0: none).")
_MIN_PART = flags.DEFINE_float("min_part_s", 20.0, "With --budget_s: skip a part that would "
                               "start with less than this left.")
_LIST = flags.DEFINE_bool("list", False, "Print the profile's parts and exit.")
_DATA = flags.DEFINE_string("data_dir", str(Path(__file__).resolve().parents[2] / "shared" /
                                            "data"),
                            "The photographs' folder ({data} in the parts: hires/ inside it).")
_ENV = flags.DEFINE_string("env", "", "Internal: write this process's environment as JSON here.")


@dataclasses.dataclass(frozen=True)
class Part:
    """One benchmark run: `python <args>` with {out}, {name}, {inputs}, {demo} and {data}
    filled in; its JSON rows are read from `result` (filled in the same way)."""

    name: str
    args: tuple[str, ...]
    timeout_s: float
    what: str
    result: str = "{out}/{name}.json"
    resumable: bool = False  # the launcher resumes from `result`: a rerun keeps its rows


_RENDER = ("-m", "experiments.bench_render", "--out={out}/{name}.json")
_DECODE = ("-m", "experiments.bench_decode", "--image={inputs}/demo_2048x1365.png", "--cr=50",
           "--steps=100", "--out={out}/{name}.json")
_GPU = (
    Part("env", ("-m", "experiments.bench_suite", "--env={out}/{name}.json"), 120,
         "device, platform, versions and the backend `auto` picks (with its probe)"),
    Part("render", (*_RENDER, "--sizes=2048x1365@50,7680x4320@50", "--backends=xla,pallas",
                    "--repeats=5"), 240,
         "training-step breakdown at 2K and 8K CR 50, xla vs pallas"),
    Part("render_16k", (*_RENDER, "--sizes=16384x16384@200", "--backends=pallas",
                        "--repeats=3", "--scan_steps=5"), 180,
         "training-step breakdown at 16384^2 CR 200 (N = 575,218), pallas"),
    Part("decode", (*_DECODE, "--repeats=2"), 150,
         "`smartsplat decompress` of a 2048x1365 file: cold, warm, no cache"),
    Part("init_16k", ("-m", "experiments.bench_init", "--size=16384x16384", "--crs=50",
                      "--repeats=2", "--out={out}/{name}.json"), 150,
         "initialization at 16384^2 CR 50 (N = 2,300,875)"),
    Part("init", ("-m", "experiments.bench_init", "--images={inputs}/demo_2048x1365.png",
                  "--crs=50", "--repeats=3", "--out={out}/{name}.json"), 60,
         "initialization at 2048x1365 CR 50"),
    Part("qat", ("-m", "experiments.bench_qat", "--sizes=2048x1365@50", "--backend=auto",
                 "--out={out}/{name}.json"), 90,
         "quantization-aware step rate against the float step, 2048x1365 CR 50"),
    Part("pallas_tests", ("-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_render_pallas.py"), 180,
         "the Pallas kernel tests on this device"),
)
_CPU = (
    Part("env", _GPU[0].args, 60, _GPU[0].what),
    Part("render_quickstart", (*_RENDER, "--sizes=768x512@20", "--backends=xla",
                               "--image={demo}", "--pretrain_steps=1000", "--repeats=5"), 900,
         "the quick start's scene after 1,000 steps: training-step breakdown"),
    Part("render", (*_RENDER, "--sizes=768x512@20,2048x1365@50", "--backends=xla",
                    "--repeats=5"), 600, "synthetic scenes: training-step breakdown"),
    Part("decode", (*_DECODE, "--repeats=3"), 400, _GPU[3].what),
    Part("init", _GPU[5].args, 200, _GPU[5].what),
    Part("qat", ("-m", "experiments.bench_qat", "--sizes=256x256@50", "--backend=xla",
                 "--out={out}/{name}.json"), 300,
         "quantization-aware step rate against the float step, 256^2 CR 50"),
)
_CODEC = ("-m", "experiments.bench_codec", "--out_dir={out}/{name}")
_CODEC_RESULT = "{out}/{name}/results.json"
_HIRES_2K = ("--images={data}/hires/*.png", "--steps=10000")
_GPU_CODEC = (
    Part("env", _GPU[0].args, 60, _GPU[0].what),
    Part("codec_50k", (*_CODEC, "--images={data}/hires/elementary_Morskie_Oko.jpg",
                       "--max_side=1134", "--crs=100", "--steps=50000"), 300,
         "the file's drop after the paper's 50,000 steps: 1134x756 photo, CR 100",
         _CODEC_RESULT, True),
    Part("codec_hires_cr200", (*_CODEC, *_HIRES_2K, "--crs=200", "--relocate_every=500",
                               "--lr_means=auto", "--lr_scales=auto"), 360,
         "equal bytes, hires <= 2048 px, CR 200, 10,000 steps, `compress`'s training",
         _CODEC_RESULT, True),
    Part("codec_hires_cr200_l2", (*_CODEC, *_HIRES_2K, "--crs=200", "--relocate_every=500",
                                  "--lr_means=auto", "--lr_scales=auto", "--loss=l2"), 360,
         "equal bytes, hires <= 2048 px, CR 200, 10,000 steps, `compress --loss l2`",
         _CODEC_RESULT, True),
    Part("codec_hires_cr100", (*_CODEC, *_HIRES_2K, "--crs=100", "--relocate_every=500",
                               "--lr_means=auto", "--lr_scales=auto"), 360,
         "equal bytes, hires <= 2048 px, CR 100, 10,000 steps, `compress`'s training",
         _CODEC_RESULT, True),
    Part("codec_hires_cr200_paper", (*_CODEC, *_HIRES_2K, "--crs=200"), 360,
         "equal bytes, hires <= 2048 px, CR 200, 10,000 steps, the paper's training",
         _CODEC_RESULT, True),
)
_SMOKE = (
    Part("env", _GPU[0].args, 60, _GPU[0].what),
    Part("render", (*_RENDER, "--sizes=48x32@20", "--backends=xla", "--repeats=1",
                    "--scan_steps=2"), 300, "a 48x32 scene"),
)
PROFILES = {"gpu": _GPU, "cpu": _CPU, "gpu_codec": _GPU_CODEC, "smoke": _SMOKE}


def environment() -> dict:
    """What the figures were measured on: versions, devices, and what backend "auto" picks
    for training (running its probe on a GPU) and for decoding, with the reason."""
    import platform

    import jax
    import jaxlib

    from smartsplat_jax.render import auto

    dev = jax.devices()[0]
    t0 = time.perf_counter()
    train_backend = auto.auto_backend(dev)
    probe_s = time.perf_counter() - t0
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "platform": jax.default_backend(),
            "device_kind": str(dev.device_kind), "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "auto_train": train_backend,
            "auto_train_reason": auto.decisions()[f"{dev.platform}:{dev.device_kind}"][1],
            "auto_probe_s": probe_s, "auto_decode": auto.auto_backend(dev, forward_only=True)}


def prepare_inputs(inputs: Path, data: str = "") -> dict[str, str]:
    """Writes the images the parts read into `inputs` (once); the placeholders' values
    (`data`: the photographs' folder, {data})."""
    from smartsplat_jax import DEMO_IMAGE, load_image, save_image

    inputs.mkdir(parents=True, exist_ok=True)
    big = inputs / "demo_2048x1365.png"
    if not big.exists():
        save_image(big, resize_image(load_image(DEMO_IMAGE), 2048, 1365))
    return {"inputs": str(inputs), "demo": str(DEMO_IMAGE), "data": data}


def run_part(part: Part, out: Path, values: dict[str, str], timeout_s: float) -> dict:
    """Runs one part (its own process group, killed whole at the limit); its summary row."""
    argv = [sys.executable] + [a.format(out=out, name=part.name, **values) for a in part.args]
    log = out / f"{part.name}.log"
    result = Path(part.result.format(out=out, name=part.name, **values))
    if not part.resumable:
        result.unlink(missing_ok=True)  # a row from an earlier run is not this run's
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - t0
    try:
        rows = json.loads(result.read_text())
    except (OSError, ValueError):  # not written (failed, timed out) or not JSON
        rows = None
    return {"part": part.name, "what": part.what, "status": status, "wall_s": wall,
            "command": " ".join(argv[1:]), "log": str(log), "rows": rows}


def _tables(log: str) -> list[str]:
    """The markdown table lines a part printed."""
    try:
        with open(log) as f:
            return [line.rstrip() for line in f if line.startswith("|")]
    except OSError:
        return []


def run_suite(parts, out: Path, budget_s: float = 0.0, min_part_s: float = 20.0,
              data: str = "") -> list[dict]:
    """Runs `parts` in order under the budget (0: none); one summary row per part. `data`:
    the photographs' folder, {data} in the parts' arguments."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    values = prepare_inputs(out / "inputs", data)
    summary = []
    for part in parts:
        left = budget_s - (time.perf_counter() - start) if budget_s else float("inf")
        if left < min_part_s:
            summary.append({"part": part.name, "what": part.what, "wall_s": 0.0,
                            "status": f"skipped: {max(left, 0):.0f} s of the budget left",
                            "command": None, "log": None, "rows": None})
            print(f"[{part.name}] {summary[-1]['status']}", flush=True)
            continue
        print(f"[{part.name}] {part.what} (limit {min(part.timeout_s, left):.0f} s)",
              flush=True)
        row = run_part(part, out, values, min(part.timeout_s, left))
        summary.append(row)
        print(f"[{part.name}] {row['status']} in {row['wall_s']:.1f} s", flush=True)
    return summary


def main(argv):
    del argv
    if _ENV.value:
        env = environment()
        print("| " + " | ".join(env) + " |\n|" + "---|" * len(env) + "\n| "
              + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in env.values())
              + " |")
        write_json(_ENV.value, [env])
        return
    parts = PROFILES[_PROFILE.value]
    names = [p.name for p in parts]
    unknown = [n for n in _ONLY.value if n not in names]
    if unknown:
        sys.exit(f"error: --only={','.join(unknown)}: no such part in profile "
                 f"{_PROFILE.value!r} (its parts: {', '.join(names)})")
    if _BUDGET.value < 0:
        sys.exit(f"error: --budget_s={_BUDGET.value} must be >= 0 (0: no budget)")
    if _ONLY.value:
        parts = [p for p in parts if p.name in _ONLY.value]
    if _LIST.value:
        for p in parts:
            print(f"{p.name:24s} {p.timeout_s:5.0f} s  {p.what}\n{'':31s}python "
                  + " ".join(p.args))
        return
    readers = [p.name for p in parts if any("{data}" in a for a in p.args)]
    if readers and not os.path.isdir(_DATA.value):
        sys.exit(f"error: --data_dir={_DATA.value} is not a folder: the parts "
                 f"{', '.join(readers)} read the photographs there (hires/ inside it)")
    out = Path(_OUT.value)
    summary = run_suite(parts, out, _BUDGET.value, _MIN_PART.value, _DATA.value)
    print("\n| part | status | wall s | what |\n|---|---|---|---|")
    for r in summary:
        print(f"| {r['part']} | {r['status']} | {r['wall_s']:.1f} | {r['what']} |")
    for r in summary:
        lines = _tables(r["log"]) if r["log"] else []
        if lines:
            print(f"\n{r['part']}:\n" + "\n".join(lines))
    write_json(str(out / "suite.json"), {"profile": _PROFILE.value, "parts": summary})
    if any(r["status"] != "ok" for r in summary):
        print("\nnot every part finished: see the status column and each part's log",
              file=sys.stderr)


if __name__ == "__main__":
    app.run(interruptible(main))
