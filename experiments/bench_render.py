"""Benchmark the rasterizer: forward and forward+backward, per backend and image size.

  python -m experiments.bench_render                      # CPU sizes
  python -m experiments.bench_render --sizes=768x512@20,2048x1365@50,7680x4320@50,16384x16384@200

Scenes are SmartSplat-like (SPEC §4.4): N = floor(3HW / (7 CR)) Gaussians, uniform means,
scales s_base * exp(-w/2) per axis with w ~ U(0, 1), random angles and colours. Reported per
row: pairs (tile, Gaussian), median milliseconds after warm-up (block_until_ready), XLA's
buffer estimate for the compiled program (arguments + outputs + temporaries) and, where the
device reports it, the peak device memory; "evals/s" counts Gaussian-pixel evaluations done
(pairs * T * T) and "useful/s" those with alpha >= 1/255 (the ellipse areas, an analytic
count) per second of forward+backward.
"""

from __future__ import annotations

import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.common import write_json

from smartsplat_jax import params as P
from smartsplat_jax.render import pair_count, render
from smartsplat_jax.render.reference import MAX_DENSE_ELEMENTS

_SIZES = flags.DEFINE_list("sizes", ["128x128@20", "768x512@20", "2048x1365@50"],
                           "WIDTHxHEIGHT@CR entries.")
_BACKENDS = flags.DEFINE_list("backends", ["xla", "reference"], "Backends to time.")
_TILE = flags.DEFINE_integer("tile", None, "Tile side for xla (default: the library's).")
_CHUNK = flags.DEFINE_integer("chunk", None, "Pairs per loop step for xla (default: library's).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats (after 2 warm-up calls).")
_OUT = flags.DEFINE_string("out", "results/bench_render.json", "JSON output path.")
_SEED = flags.DEFINE_integer("seed", 0, "Scene seed.")


def smartsplat_like_scene(key: jax.Array, height: int, width: int, n: int) -> P.GaussianParams:
    """N Gaussians with SmartSplat-like initial scales for an H x W image."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    s_base = math.sqrt(height * width / (math.pi * n)) / 3.0
    w = jax.random.uniform(k2, (n, 2))
    return P.GaussianParams.create(
        means=jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0),
        scales=s_base * jnp.exp(-0.5 * w),
        colors=jax.random.uniform(k3, (n, 3)),
        rotation=jax.random.normal(k4, (n, 1)))


def _median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _buffer_gib(jitted, *args) -> float | None:
    try:
        m = jitted.lower(*args).compile().memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return total / 2**30
    except Exception:  # not every backend/version reports it
        return None


def _device_peak_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def bench_one(width: int, height: int, cr: float, backend: str) -> dict | None:
    n = P.num_gaussians(height, width, cr)
    params = smartsplat_like_scene(jax.random.PRNGKey(_SEED.value), height, width, n)
    if backend == "reference" and n * height * width > MAX_DENSE_ELEMENTS // 4:
        return None
    opts = {}
    if backend == "xla":
        if _TILE.value:
            opts["tile"] = _TILE.value
        if _CHUNK.value:
            opts["chunk"] = _CHUNK.value
    target = jax.random.uniform(jax.random.PRNGKey(1), (height, width, 3))
    fwd = jax.jit(lambda p: render(p, height, width, backend=backend, **opts))
    loss = lambda p, t: jnp.mean(jnp.abs(render(p, height, width, backend=backend, **opts) - t))
    fwd_bwd = jax.jit(jax.value_and_grad(loss))
    from smartsplat_jax.render import xla as X

    tile = opts.get("tile", X.DEFAULT_TILE)
    pairs = pair_count(params, height, width, tile)
    s = np.abs(np.asarray(params.scales))
    useful = float(np.sum(math.pi * 2.0 * math.log(255.0) * s[:, 0] * s[:, 1]))
    row = {"width": width, "height": height, "cr": cr, "n": n, "backend": backend,
           "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
           "tile": tile if backend == "xla" else None, "pairs": pairs if backend == "xla" else None}
    row["fwd_ms"] = _median_ms(fwd, params, repeats=_REPEATS.value)
    row["fwd_bwd_ms"] = _median_ms(fwd_bwd, params, target, repeats=_REPEATS.value)
    row["fwd_buffers_gib"] = _buffer_gib(fwd, params)
    row["fwd_bwd_buffers_gib"] = _buffer_gib(fwd_bwd, params, target)
    row["device_peak_gib"] = _device_peak_gib()
    evals = pairs * tile * tile if backend == "xla" else n * height * width
    row["evals_per_s"] = evals / (row["fwd_bwd_ms"] / 1e3)
    row["useful_per_s"] = useful / (row["fwd_bwd_ms"] / 1e3)
    return row


def main(argv):
    del argv
    rows = []
    for spec in _SIZES.value:
        size, cr = spec.split("@")
        width, height = (int(v) for v in size.split("x"))
        for backend in _BACKENDS.value:
            row = bench_one(width, height, float(cr), backend)
            if row is None:
                print(f"# {backend} skipped at {width}x{height}: the dense array would not fit")
                continue
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| size | CR | N | backend | device | pairs | fwd ms | fwd+bwd ms | buffers GiB (fwd+bwd) "
          "| useful evals/s | ratio vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = [q for q in rows if q["backend"] == "reference" and q["width"] == r["width"]
               and q["height"] == r["height"] and q["cr"] == r["cr"]]
        ratio = f"{ref[0]['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}x" if ref and r is not ref[0] else ""
        buf = r["fwd_bwd_buffers_gib"]
        print(f"| {r['width']}x{r['height']} | {r['cr']:g} | {r['n']} | {r['backend']} | "
              f"{r['device']} | {r['pairs'] or ''} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
              f"{'' if buf is None else f'{buf:.3f}'} | {r['useful_per_s']:.3g} | {ratio} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(main)
