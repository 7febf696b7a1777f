"""Benchmark the rasterizer: forward, forward+backward and a whole training step, per backend
and image size, with the step broken down into its parts.

  python -m experiments.bench_render                      # CPU sizes, xla vs reference
  python -m experiments.bench_render --sizes=768x512@20 --backends=xla \
      --image=smartsplat_jax/data/kodim23.png --pretrain_steps=1000   # the quick start's scene
  python -m experiments.bench_render --backends=xla,pallas \
      --sizes=2048x1365@50,7680x4320@50,16384x16384@200   # GPU: the issue's targets

The training step is the library's: render + SmartSplat loss (0.9 L1 + 0.1 (1 - SSIM)) +
gradient + Adam update (`train.loss_value`, `train.make_optimizer`), jitted as one function.
It is broken down into the rasterizer's forward+backward (against a fixed random cotangent),
the SmartSplat loss's forward+backward with respect to the image, and the optimizer update,
each timed alone; "rest" is the step minus the three (fusion and overlap across them make it
negative at times), and "loss+opt share" is (loss + optimizer) / step.

Every part is timed as `--scan_steps` iterations inside one `lax.scan`, each iteration
depending on the last, as `train.fit` runs its steps: per step, the median over repeats
after a warm-up. (Timed one call at a time, a CPU part also pays for fresh output buffers
at every call -- page faults that training inside a scan does not see: the SmartSplat loss
of a 768x512 image measured 48 ms that way and 24 ms per step in a scan.)

Scenes: by default SmartSplat-like synthetic ones (SPEC §4.4): N = floor(3HW / (7 CR))
Gaussians, uniform means, scales s_base * exp(-w/2) per axis with w ~ U(0, 1), random angles
and colours. With `--image`, the image resized to each size and SmartSplat's initialization
on it, trained `--pretrain_steps` steps first (trained Gaussians grow: the quick start's
scene has 2.2x the pairs after 1,000 steps than at its initialization). Reported per row:
pairs (tile, Gaussian), median milliseconds, XLA's buffer estimate for the compiled
program (arguments + outputs + temporaries) and, where the device reports it, the peak
device memory; "evals/s" counts Gaussian-pixel evaluations done (pairs * T * T) and
"useful/s" those with alpha >= 1/255 (the ellipse areas, an analytic count) per second of
forward+backward. On a CPU the pallas kernels run interpreted (slow; only useful as a
smoke test).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from experiments.common import interruptible, nudge, scan_ms, write_json

from smartsplat_jax import losses
from smartsplat_jax import params as P
from smartsplat_jax.render import pair_capacity, pair_count, render
from smartsplat_jax.render import pallas as PL
from smartsplat_jax.render.auto import synthetic_scene
from smartsplat_jax.render import xla as X
from smartsplat_jax.train import FitConfig, loss_value, make_optimizer
from smartsplat_jax.render.reference import MAX_DENSE_ELEMENTS

_SIZES = flags.DEFINE_list("sizes", ["128x128@20", "768x512@20", "2048x1365@50"],
                           "WIDTHxHEIGHT@CR entries.")
_BACKENDS = flags.DEFINE_list("backends", ["xla", "reference"],
                              "Backends to time: xla, pallas, reference.")
_TILE = flags.DEFINE_integer("tile", None, "Tile side for xla (default: the library's).")
_CHUNK = flags.DEFINE_integer("chunk", None, "Pairs per loop step for xla (default: library's).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repeats (after 1 warm-up call).")
_SCAN_STEPS = flags.DEFINE_integer("scan_steps", 10,
                                   "Iterations of each timed part inside one lax.scan.")
_TRAIN_STEP = flags.DEFINE_bool("train_step", True,
                                "Also time a whole training step (render+loss+grad+Adam).")
_IMAGE = flags.DEFINE_string("image", "", "Scene: SmartSplat's initialization on this image "
                             "(resized to each size); empty: a synthetic scene.")
_PRETRAIN = flags.DEFINE_integer("pretrain_steps", 0, "With --image: train this many steps "
                                 "(xla backend) before timing.")
_OUT = flags.DEFINE_string("out", "results/bench_render.json", "JSON output path.")
_SEED = flags.DEFINE_integer("seed", 0, "Scene seed.")


def _scan_ms(body, carry) -> float:
    """`common.scan_ms` with `--scan_steps` iterations and `--repeats` calls."""
    return scan_ms(body, carry, steps=_SCAN_STEPS.value, repeats=_REPEATS.value)


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


def _step_parts(backend: str, capacity: int | None, params: P.GaussianParams, target,
                rendered) -> dict:
    """Per-step milliseconds of the whole training step and of its parts outside the
    rasterizer: the SmartSplat loss's forward+backward with respect to the rendered image,
    and the Adam update (on gradients of the parameters' shapes) with its application."""
    config = FitConfig(backend=backend)
    opt = make_optimizer(config)
    state = opt.init(params)

    def train_step(carry):
        p, s = carry
        grads = jax.grad(lambda q: loss_value(q, target, config, capacity)[0])(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    loss_grad = jax.grad(lambda r: losses.smartsplat_loss(r, target, config.lambda_l1))
    grads = jax.tree_util.tree_map(lambda x: 1e-6 * jnp.ones_like(x), params)

    def update(carry):
        p, s = carry
        u, s = opt.update(grads, s, p)
        return optax.apply_updates(p, u), s

    return {"step_ms": _scan_ms(train_step, (params, state)),
            "loss_fwd_bwd_ms": _scan_ms(lambda r: r - 1e-6 * loss_grad(r), rendered),
            "optimizer_ms": _scan_ms(update, (params, state))}


def _scene(width: int, height: int, n: int) -> P.GaussianParams:
    """The Gaussians to time: synthetic, or SmartSplat's initialization on --image resized
    to width x height, trained --pretrain_steps steps."""
    if not _IMAGE.value:
        return synthetic_scene(jax.random.PRNGKey(_SEED.value), height, width, n)
    from smartsplat_jax import load_image
    from smartsplat_jax.train import config_for_method, fit, initialize

    img = np.asarray(jax.image.resize(jnp.asarray(load_image(_IMAGE.value)),
                                      (height, width, 3), "lanczos3").clip(0.0, 1.0))
    params, _ = initialize("smartsplat", jax.random.PRNGKey(_SEED.value), img, n)
    if _PRETRAIN.value:
        cfg = config_for_method("smartsplat", steps=_PRETRAIN.value, backend="xla",
                                eval_every=0, checkpoint_every=0)
        params, _ = fit(img, params, cfg, progress=False)
    return params


def bench_one(width: int, height: int, cr: float, backend: str) -> dict | None:
    n = P.num_gaussians(height, width, cr)
    if backend == "reference" and n * height * width > MAX_DENSE_ELEMENTS // 4:
        return None
    params = _scene(width, height, n)
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
    cotangent = jax.random.normal(jax.random.PRNGKey(2), (height, width, 3))
    draw = lambda p: render(p, height, width, backend=backend, **opts)  # noqa: E731
    fwd = jax.jit(draw)
    fwd_bwd = jax.jit(jax.grad(lambda p: jnp.sum(draw(p) * cotangent)))

    pairs = None if tile is None else pair_count(params, height, width, tile)
    s = np.abs(np.asarray(params.scales))
    useful = float(np.sum(math.pi * 2.0 * math.log(255.0) * s[:, 0] * s[:, 1]))
    row = {"width": width, "height": height, "cr": cr, "n": n, "backend": backend,
           "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
           "jax": jax.__version__, "tile": tile, "pairs": pairs,
           "capacity": opts.get("capacity"), "scene": _IMAGE.value or "synthetic",
           "pretrain_steps": _PRETRAIN.value if _IMAGE.value else 0,
           "scan_steps": _SCAN_STEPS.value}
    # Forward: the next iteration's colours depend on this render (so nothing is hoisted).
    row["fwd_ms"] = _scan_ms(lambda p: p.replace(colors=p.colors + 1e-30 * jnp.mean(draw(p))),
                             params)
    row["fwd_bwd_ms"] = _scan_ms(lambda p: nudge(p, fwd_bwd(p)), params)
    row["fwd_buffers_gib"] = _buffer_gib(fwd, params)
    row["fwd_bwd_buffers_gib"] = _buffer_gib(fwd_bwd, params)
    row["step_ms"] = row["step_it_per_s"] = row["loss_opt_share"] = None
    if _TRAIN_STEP.value:
        row.update(_step_parts(backend, opts.get("capacity"), params, target, fwd(params)))
        row["step_it_per_s"] = 1e3 / row["step_ms"]
        row["rest_ms"] = (row["step_ms"] - row["fwd_bwd_ms"] - row["loss_fwd_bwd_ms"]
                          - row["optimizer_ms"])
        row["loss_opt_share"] = (row["loss_fwd_bwd_ms"] + row["optimizer_ms"]) / row["step_ms"]
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
          "| loss fwd+bwd ms | optimizer ms | rest ms | loss+opt share "
          "| step it/s | buffers GiB (fwd+bwd) | peak GiB | useful evals/s | fwd+bwd vs xla "
          "| max abs diff vs xla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

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
              f"{fmt(r.get('rest_ms'), '.2f')} | {fmt(r.get('loss_opt_share'), '.0%')} | "
              f"{fmt(r['step_it_per_s'], '.1f')} | {fmt(r['fwd_bwd_buffers_gib'], '.3f')} | "
              f"{fmt(r['device_peak_gib'], '.2f')} | {r['useful_per_s']:.3g} | {ratio} | "
              f"{fmt(r['max_abs_diff_vs_xla'], '.2g')} |")
    write_json(_OUT.value, rows)


if __name__ == "__main__":
    app.run(interruptible(main))
