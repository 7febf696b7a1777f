"""Benchmark one image's loss over several devices, in bands or blocks (`train.sharded`).

  python -m experiments.bench_sharded --sizes=512x512@20 --devices=1,2,4,2x2
  python -m experiments.bench_sharded --simulate=4 ...   # 4 CPU devices on a CPU-only host

For each size and mesh (D: D x 1 bands of rows; RxC: R x C blocks): the loss's
forward+backward over the mesh (median ms, column "bands_ms" whatever the mesh), the
one-device `train.loss_value` for comparison -- both timed as training runs them,
`--scan_steps` iterations inside one jitted `lax.scan`, each nudging the parameters by
its gradient, per iteration --, the difference of the loss and two relative
differences of the gradients from it (float32; both SSIM backwards are the hand-written one):
|g_sharded - g_one| / |g_one| over all parameters, and the largest max|g_sharded - g_one| /
max|g_one| over the attributes (means, scales, ...), which shows a few Gaussians' gradients
going astray where the norm does not; and XLA's per-device buffer sizes
of the sharded program (temporaries per pixel of a device's block, halo included). The scene is the demo photo tiled to the size with a SmartSplat initialization (means at
integer pixels), its scales and angles perturbed by 0.3 N(0, 1) px and N(0, 1) rad.
Prints a table and writes JSON.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from experiments.common import devices_value, interruptible, nudge, scan_ms, write_json

_SIZES = flags.DEFINE_list("sizes", ["512x512@20"], "WIDTHxHEIGHT@CR entries.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Meshes: D (D x 1 bands) or RxC "
                              "(R x C blocks).")
_SIMULATE = flags.DEFINE_integer("simulate", 0, "Simulate this many CPU devices "
                                 "(XLA_FLAGS=--xla_force_host_platform_device_count; the "
                                 "launcher restarts itself with it). 0: the real devices.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats (after warm-up).")
_SCAN_STEPS = flags.DEFINE_integer("scan_steps", 5, "Forward+backward iterations inside "
                                   "one lax.scan per timed call.")
_OUT = flags.DEFINE_string("out", "results/bench_sharded.json", "JSON output path.")

_FLAG = "--xla_force_host_platform_device_count"


def _row(size: str, shape: tuple[int, int]) -> dict:
    import jax
    import numpy as np

    from smartsplat_jax import DEMO_IMAGE, load_image
    from smartsplat_jax import params as P
    from smartsplat_jax.train import FitConfig, initialize, loss_value
    from smartsplat_jax.train import sharded as S

    dims, cr = size.split("@")
    width, height = (int(v) for v in dims.split("x"))
    demo = load_image(DEMO_IMAGE)
    reps = (-(-height // demo.shape[0]), -(-width // demo.shape[1]), 1)
    image = np.tile(demo, reps)[:height, :width]
    n = P.num_gaussians(height, width, float(cr))
    params, _ = initialize("smartsplat", jax.random.PRNGKey(0), image, n)
    # round initial Gaussians have no angle gradient but rounding noise: make them elliptic
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    params = params.replace(
        scales=params.scales + 0.3 * jax.random.normal(k1, params.scales.shape),
        rotation=params.rotation + jax.random.normal(k2, params.rotation.shape))
    config = FitConfig(backend="xla")
    one = jax.jit(jax.value_and_grad(lambda q: loss_value(q, image, config)[0]))
    devices = shape[0] * shape[1]
    mesh = S.block_mesh(jax.devices()[:devices], shape)
    target = S.shard_target(image, mesh)
    banded = jax.jit(jax.value_and_grad(
        lambda q, t: S.sharded_loss(q, t, height, width, mesh)[0]))
    (l1, g1), (ld, gd) = one(params), banded(params, target)
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])  # noqa: E731
    grad_err = float(np.linalg.norm(flat(gd) - flat(g1)) / (np.linalg.norm(flat(g1)) + 1e-30))
    grad_max_err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
                       for a, b in zip(jax.tree_util.tree_leaves(gd),
                                       jax.tree_util.tree_leaves(g1)))
    mem = banded.lower(params, target).compile().memory_analysis()
    rows, cols = S.block_size(height, width, mesh)
    band_px = (rows + 2 * S.HALO) * (cols + 2 * S.HALO)
    temp = None if mem is None else mem.temp_size_in_bytes
    return {"size": f"{width}x{height}", "cr": float(cr), "num_gaussians": n,
            "devices": devices, "mesh": f"{shape[0]}x{shape[1]}",
            "scan_steps": _SCAN_STEPS.value,
            "device": jax.devices()[0].device_kind,
            "one_device_ms": _scan_ms(one, params),
            "bands_ms": _scan_ms(banded, params, target),
            "loss_abs_diff": abs(float(ld) - float(l1)), "grad_rel_diff": grad_err,
            "grad_max_rel_diff": grad_max_err,
            "temp_bytes_per_device": temp,
            "temp_bytes_per_band_pixel": None if temp is None else temp / band_px}


def _scan_ms(value_and_grad, params, *args) -> float:
    """Milliseconds per call of `value_and_grad(params, *args)` inside a jitted lax.scan of
    `--scan_steps` iterations, each nudging the parameters by 1e-12 x the gradient so that
    every iteration depends on the last (`common.scan_ms`; the median over `--repeats`)."""
    return scan_ms(lambda p: nudge(p, value_and_grad(p, *args)[1]), params,
                   steps=_SCAN_STEPS.value, repeats=_REPEATS.value)


def main(argv):
    del argv
    if _SIMULATE.value and _FLAG not in os.environ.get("XLA_FLAGS", ""):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}={_SIMULATE.value}")
        os.execvpe(sys.executable, [sys.executable, "-m", "experiments.bench_sharded",
                                    *sys.argv[1:]], env)
    import jax

    from smartsplat_jax.train.sharded import mesh_shape

    shapes = [None if devices_value(d) is None else mesh_shape(devices_value(d))
              for d in _DEVICES.value]
    bad = [d for d, s in zip(_DEVICES.value, shapes)
           if s is None or not s[0] * s[1] <= len(jax.devices())]
    if bad:
        sys.exit(f"error: --devices={_DEVICES.value}: {bad} not D or RxC with at most "
                 f"{len(jax.devices())} devices (the devices here; --simulate=N gives N CPU "
                 "devices)")
    rows = [_row(size, s) for size in _SIZES.value for s in shapes]
    print("| size | CR | N | mesh | device | one device ms | sharded ms | loss diff | "
          "grad rel diff | grad max rel diff | temp MiB/device | temp B/block px |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        temp, per_px = r["temp_bytes_per_device"], r["temp_bytes_per_band_pixel"]
        mib = "n/a" if temp is None else f"{temp / 2**20:.1f}"
        per_px = "n/a" if per_px is None else f"{per_px:.0f}"
        print(f"| {r['size']} | {r['cr']:g} | {r['num_gaussians']} | {r['mesh']} | "
              f"{r['device']} | {r['one_device_ms']:.1f} | {r['bands_ms']:.1f} | "
              f"{r['loss_abs_diff']:.2e} | {r['grad_rel_diff']:.2e} | "
              f"{r['grad_max_rel_diff']:.2e} | {mib} | {per_px} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
