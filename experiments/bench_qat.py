"""Benchmark the training step rate with and without quantization-aware training.

  python -m experiments.bench_qat                                   # CPU: 256^2 crop, CR 50
  python -m experiments.bench_qat --sizes=2048x1365@50 --backend=pallas   # GPU

One chunk of `--chunk` steps of the library's compiled training loop (`train.loop`), timed
three ways on a photo crop (the demo image tiled to the size) with SmartSplat's
initialization: "float" (a run without a quantizer: the lean program), "qat-program, float
phase" (the program of a run with a quantizer, before its quantization-aware phase) and
"quantization-aware" (every step with positions, scales and angles snapped to the file's
grid and colours projected into its range: the last phase of a run). Reported: median ms per
step after warm-up and each rate relative to "float" (the target: the quantization-aware
phase at >= 80 % of the float rate). Writes JSON.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.common import interruptible, write_json

from smartsplat_jax import DEMO_IMAGE, load_image
from smartsplat_jax import params as P
from smartsplat_jax.codec.quantize import grid
from smartsplat_jax.codec.rate import BudgetQuantizer, byte_budget
from smartsplat_jax.render import pair_capacity, resolve_backend
from smartsplat_jax.render.auto import median_seconds
from smartsplat_jax.train import config_for_method, initialize, make_optimizer
from smartsplat_jax.train.loop import QatSchedule, _run_chunk, compiled_config
from smartsplat_jax.train.optim import hyperparams

_SIZES = flags.DEFINE_list("sizes", ["256x256@50"], "WIDTHxHEIGHT@CR entries.")
_BACKEND = flags.DEFINE_string("backend", "auto", "Renderer backend.")
_CHUNK = flags.DEFINE_integer("chunk", 50, "Steps per timed chunk.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (after 2 warm-up calls).")
_OUT = flags.DEFINE_string("out", "results/bench_qat.json", "JSON output path.")


def _image(width: int, height: int) -> np.ndarray:
    demo = load_image(DEMO_IMAGE)
    reps = (-(-height // demo.shape[0]), -(-width // demo.shape[1]), 1)
    return np.tile(demo, reps)[:height, :width]


def _row(size: str) -> dict:
    dims, cr = size.split("@")
    width, height = (int(v) for v in dims.split("x"))
    cr = float(cr)
    image = jnp.asarray(_image(width, height))
    n = P.num_gaussians(height, width, cr)
    params, _ = initialize("smartsplat", jax.random.PRNGKey(0), np.asarray(image), n)
    config = config_for_method("smartsplat", steps=10 * _CHUNK.value, chunk_steps=_CHUNK.value,
                               backend=resolve_backend(_BACKEND.value))
    opt_state = make_optimizer(config).init(params)
    spec, _ = BudgetQuantizer(height, width, byte_budget(height, width, cr),
                              backend=config.backend).plan(params)
    qgrid = grid(spec.check())
    capacity = pair_capacity(params, height, width) if config.backend == "pallas" else None
    hyper, compiled = hyperparams(config), compiled_config(config)
    step0, count = jnp.asarray(0, jnp.int32), jnp.asarray(_CHUNK.value, jnp.int32)
    lr_scale = jnp.asarray(1.0, jnp.float32)
    never = QatSchedule(*(jnp.asarray(config.steps, jnp.int32),) * 2)
    always = QatSchedule(*(jnp.asarray(0, jnp.int32),) * 2)

    def timed(schedule, qat):
        fn = lambda: _run_chunk(params, opt_state, image, qgrid, step0, count, schedule,  # noqa: E731
                                lr_scale, hyper, config=compiled, capacity=capacity, qat=qat)
        return 1e3 * median_seconds(fn, repeats=_REPEATS.value) / _CHUNK.value

    ms_float = timed(never, False)
    ms_program = timed(never, True)
    ms_qat = timed(always, True)
    return {"size": f"{width}x{height}", "cr": cr, "num_gaussians": n,
            "backend": config.backend, "device": jax.devices()[0].device_kind,
            "chunk": _CHUNK.value, "ms_per_step_float": ms_float,
            "ms_per_step_qat_program_float_phase": ms_program,
            "ms_per_step_quantization_aware": ms_qat,
            "qat_rate_vs_float": ms_float / ms_qat, "quantizer": spec.describe()}


def main(argv):
    del argv
    rows = [_row(s) for s in _SIZES.value]
    print("| size | CR | N | backend | device | float ms/step | QAT program, float phase "
          "| quantization-aware ms/step | QAT rate / float rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['cr']:g} | {r['num_gaussians']} | {r['backend']} | "
              f"{r['device']} | {r['ms_per_step_float']:.2f} | "
              f"{r['ms_per_step_qat_program_float_phase']:.2f} | "
              f"{r['ms_per_step_quantization_aware']:.2f} | {r['qat_rate_vs_float']:.2f} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
