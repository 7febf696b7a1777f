"""Visualize SmartSplat's initialization of one image.

  python -m experiments.visualize_init --image=photo.png --cr=50 --out_dir=results/init_viz

Writes init_weights.png, init_points.png, init_render.png and init_info.json to out_dir and
prints the rendered initialization's PSNR next to a random initialization's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
from absl import app, flags

from experiments.common import interruptible

from smartsplat_jax import DEMO_IMAGE, ImageError, load_image, metrics, num_gaussians
from smartsplat_jax.init import random_init, smart_init
from smartsplat_jax.render import render
from smartsplat_jax.viz import save_init_visualization

_IMAGE = flags.DEFINE_string("image", str(DEMO_IMAGE), "Image file (default: the bundled demo).")
_CR = flags.DEFINE_float("cr", 50.0, "Target compression ratio.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OUT = flags.DEFINE_string("out_dir", "results/init_viz", "Output folder.")
_MAX_POINTS = flags.DEFINE_integer("max_points", 20000, "Ellipses drawn at most.")


def main(argv):
    del argv
    try:
        image = load_image(_IMAGE.value)
        h, w = image.shape[:2]
        n = num_gaussians(h, w, _CR.value)
        out = Path(_OUT.value)
        out.mkdir(parents=True, exist_ok=True)
    except (ImageError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    params, info = smart_init(jax.random.PRNGKey(_SEED.value), image, n)
    viz = save_init_visualization(out, image, params, info, max_points=_MAX_POINTS.value)
    rand, _ = random_init(jax.random.PRNGKey(_SEED.value), image, n)
    info["psnr_smart_init"] = viz["psnr"]
    info["psnr_random_init"] = metrics.psnr(render(rand, h, w), image)
    info["image"] = _IMAGE.value
    info["cr"] = _CR.value
    info["tiles"].pop("origins")
    info["tiles"].pop("counts")
    (out / "init_info.json").write_text(json.dumps(info, indent=2))
    print(f"{w}x{h}, CR {_CR.value:g}, N={n}: init PSNR {viz['psnr']:.2f} dB "
          f"(random init {info['psnr_random_init']:.2f} dB), {info['seconds']['total_s']:.2f} s")
    for name, path in viz["paths"].items():
        print(f"  {name}: {path}")


if __name__ == "__main__":
    app.run(interruptible(main))
