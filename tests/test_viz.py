"""smartsplat_jax.viz and the visualize_init launcher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from smartsplat_jax import params as P
from smartsplat_jax import viz

ROOT = Path(__file__).resolve().parents[1]


def test_colormap_is_monotone_in_brightness():
    c = viz.colormap(np.linspace(0, 1, 50)[None, :])
    assert c.shape == (1, 50, 3) and c.min() >= 0 and c.max() <= 1
    lum = c[0] @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lum) > -1e-3)


def test_draw_gaussians_marks_the_ellipse_outline():
    img = np.zeros((40, 40, 3), np.float32)
    # One variational Gaussian at the centre pixel (20, 20), sigma 5 px: the circle of radius 5.
    p = P.GaussianParams.create(means=[[0.0, 0.0]], scales=[[5.0, 5.0]], colors=[[1, 1, 1]])
    im = np.asarray(viz.draw_gaussians(img, p, np.array(["variational"])))
    ys, xs = np.nonzero(im[..., 0] > 0)
    r = np.hypot(xs - 20, ys - 20)
    assert len(r) > 10 and np.all(np.abs(r - 5) <= 1.5)
    assert tuple(im[ys[0], xs[0]]) == viz.STAGE_COLOURS["variational"]


def test_line_plot_and_annotate():
    im = viz.line_plot({"loss": (np.arange(10), np.linspace(1, 0, 10))}, xlabel="step")
    assert im.size == (640, 400)
    a = viz.annotate(np.zeros((30, 200, 3)), "PSNR 30.00 dB")
    assert np.asarray(a).max() > 200  # white (anti-aliased) text on black


def test_visualize_init_launcher(tmp_path):
    src = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(src)
    out = subprocess.run([sys.executable, "-m", "experiments.visualize_init", f"--image={src}",
                          "--cr=10", f"--out_dir={tmp_path / 'viz'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("init_weights.png", "init_points.png", "init_render.png", "init_info.json"):
        assert (tmp_path / "viz" / name).is_file()
    info = json.loads((tmp_path / "viz" / "init_info.json").read_text())
    assert info["num_gaussians"] == P.num_gaussians(48, 64, 10)
    assert "psnr_smart_init" in info and "psnr_random_init" in info
