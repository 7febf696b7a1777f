"""Benchmark the rasterizer: forward, forward+backward and a whole training step, per backend
and image size.

  python -m experiments.bench_render                      # CPU sizes, xla vs reference
  python -m experiments.bench_render --backends=xla,pallas \
      --sizes=2048x1365@50,7680x4320@50,16384x16384@200   # GPU: the issue's targets

The training step is the library's: render + SmartSplat loss (0.9 L1 + 0.1 (1 - SSIM)) +
gradient + Adam update (`train.loss_value`, `train.make_optimizer`), jitted as one function.
It is broken down into the rasterizer's forward+backward (of an L1 loss), the SmartSplat
loss's forward+backward with respect to the image, and the optimizer update, each timed
alone; "rest" is the step minus the three (fusion across them makes it negative at times).
On a CPU the pallas kernels run interpreted (slow; only useful as a smoke test).

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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.common import interruptible, write_json

from smartsplat_jax import losses
from smartsplat_jax import params as P
from smartsplat_jax.render import pair_capacity, pair_count, render
from smartsplat_jax.render import pallas as PL
from smartsplat_jax.render.auto import median_seconds, synthetic_scene
from smartsplat_jax.render import xla as X
from smartsplat_jax.train import FitConfig, loss_value, make_optimizer
from smartsplat_jax.render.reference import MAX_DENSE_ELEMENTS

_SIZES = flags.DEFINE_list("sizes", ["128x128@20", "768x512@20", "2048x1365@50"],
                           "WIDTHxHEIGHT@CR entries.")
_BACKENDS = flags.DEFINE_list("backends", ["xla", "reference"],
                              "Backends to time: xla, pallas, reference.")
_TILE = flags.DEFINE_integer("tile", None, "Tile side for xla (default: the library's).")
_CHUNK = flags.DEFINE_integer("chunk", None, "Pairs per loop step for xla (default: library's).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats (after 2 warm-up calls).")
_TRAIN_STEP = flags.DEFINE_bool("train_step", True,
                                "Also time a whole training step (render+loss+grad+Adam).")
_OUT = flags.DEFINE_string("out", "results/bench_render.json", "JSON output path.")
_SEED = flags.DEFINE_integer("seed", 0, "Scene seed.")


def _ms(fn, *args, repeats: int) -> float:
    return 1e3 * median_seconds(fn, *args, repeats=repeats)


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


def _train_step(backend: str, capacity: int | None, params: P.GaussianParams):
    """(jitted step(params, opt_state, target) -> (params, opt_state, loss), initial state)."""
    config = FitConfig(backend=backend)
    opt = make_optimizer(config)

    @jax.jit
    def step(p, s, t):
        (loss, _), grads = jax.value_and_grad(loss_value, has_aux=True)(p, t, config, capacity)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return step, opt.init(params)


def _step_parts(params: P.GaussianParams, state, target, rendered) -> dict:
    """The training step's pieces outside the rasterizer, each jitted alone: the SmartSplat
    loss's forward+backward with respect to the rendered image, and the Adam update (on
    gradients of the parameters' shapes) with its application."""
    config = FitConfig()
    opt = make_optimizer(config)
    loss_grad = jax.jit(jax.value_and_grad(
        lambda r, t: losses.smartsplat_loss(r, t, config.lambda_l1)))

    @jax.jit
    def update(g, s, p):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    grads = jax.tree_util.tree_map(lambda x: 1e-6 * jnp.ones_like(x), params)
    return {"loss_fwd_bwd_ms": _ms(loss_grad, rendered, target, repeats=_REPEATS.value),
            "optimizer_ms": _ms(update, grads, state, params, repeats=_REPEATS.value)}


def bench_one(width: int, height: int, cr: float, backend: str) -> dict | None:
    n = P.num_gaussians(height, width, cr)
    params = synthetic_scene(jax.random.PRNGKey(_SEED.value), height, width, n)
    if backend == "reference" and n * height * width > MAX_DENSE_ELEMENTS // 4:
        return None
    opts, tile = {}, None
    if backend == "xla":
        tile = _TILE.value or X.DEFAULT_TILE
        opts["tile"] = tile
        if _CHUNK.value:
            opts["chunk"] = _CHUNK.value
    elif backend == "pallas":
        tile = PL.DEFAULT_TILE
        opts["capacity"] = pair_capacity(params, height, width, tile)
    target = jax.random.uniform(jax.random.PRNGKey(1), (height, width, 3))
    fwd = jax.jit(lambda p: render(p, height, width, backend=backend, **opts))
    loss = lambda p, t: jnp.mean(jnp.abs(render(p, height, width, backend=backend, **opts) - t))
    fwd_bwd = jax.jit(jax.value_and_grad(loss))

    pairs = None if tile is None else pair_count(params, height, width, tile)
    s = np.abs(np.asarray(params.scales))
    useful = float(np.sum(math.pi * 2.0 * math.log(255.0) * s[:, 0] * s[:, 1]))
    row = {"width": width, "height": height, "cr": cr, "n": n, "backend": backend,
           "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
           "jax": jax.__version__, "tile": tile, "pairs": pairs,
           "capacity": opts.get("capacity")}
    row["fwd_ms"] = _ms(fwd, params, repeats=_REPEATS.value)
    row["fwd_bwd_ms"] = _ms(fwd_bwd, params, target, repeats=_REPEATS.value)
    row["fwd_buffers_gib"] = _buffer_gib(fwd, params)
    row["fwd_bwd_buffers_gib"] = _buffer_gib(fwd_bwd, params, target)
    row["step_ms"] = row["step_it_per_s"] = None
    if _TRAIN_STEP.value:
        step, state = _train_step(backend, opts.get("capacity"), params)
        row["step_ms"] = _ms(step, params, state, target, repeats=_REPEATS.value)
        row["step_it_per_s"] = 1e3 / row["step_ms"]
        row.update(_step_parts(params, state, target, fwd(params)))
        row["rest_ms"] = (row["step_ms"] - row["fwd_bwd_ms"] - row["loss_fwd_bwd_ms"]
                          - row["optimizer_ms"])
    row["device_peak_gib"] = _device_peak_gib()
    row["max_abs_diff_vs_xla"] = None
    if backend == "pallas":  # the compiled kernels' image against the xla rasterizer's
        ref = render(params, height, width, backend="xla")
        row["max_abs_diff_vs_xla"] = float(jnp.max(jnp.abs(fwd(params) - ref)))
    evals = pairs * tile * tile if pairs is not None else n * height * width
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
    print("| size | CR | N | backend | device | tile | pairs | fwd ms | fwd+bwd ms | step ms "
          "| loss fwd+bwd ms | optimizer ms | rest ms "
          "| step it/s | buffers GiB (fwd+bwd) | peak GiB | useful evals/s | fwd+bwd vs xla "
          "| max abs diff vs xla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        ref = [q for q in rows if q["backend"] == "xla" and q["width"] == r["width"]
               and q["height"] == r["height"] and q["cr"] == r["cr"]]
        ratio = f"{ref[0]['fwd_bwd_ms'] / r['fwd_bwd_ms']:.2f}x" if ref else ""
        print(f"| {r['width']}x{r['height']} | {r['cr']:g} | {r['n']} | {r['backend']} | "
              f"{r['device']} | {fmt(r['tile'], 'd')} | {fmt(r['pairs'], 'd')} | "
              f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {fmt(r['step_ms'], '.2f')} | "
              f"{fmt(r.get('loss_fwd_bwd_ms'), '.2f')} | {fmt(r.get('optimizer_ms'), '.2f')} | "
              f"{fmt(r.get('rest_ms'), '.2f')} | "
              f"{fmt(r['step_it_per_s'], '.1f')} | {fmt(r['fwd_bwd_buffers_gib'], '.3f')} | "
              f"{fmt(r['device_peak_gib'], '.2f')} | {r['useful_per_s']:.3g} | {ratio} | "
              f"{fmt(r['max_abs_diff_vs_xla'], '.2g')} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
