"""smartsplat_jax.plots: the notebooks' matplotlib figures."""

import io

import numpy as np
import pytest
from PIL import Image

from smartsplat_jax import params as P

matplotlib = pytest.importorskip("matplotlib")
from smartsplat_jax import plots  # noqa: E402  (needs matplotlib)


def _png(fig) -> Image.Image:
    im = Image.open(io.BytesIO(fig._repr_png_()))
    assert im.format == "PNG" and im.width > 100 and im.height > 100
    return im


def test_worst_crop_finds_the_damaged_block():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, (60, 80, 3)).astype(np.float32)
    b = a + 0.01
    b[30:45, 50:65] += 0.3  # the only large error: a 15 x 15 block at (top 30, left 50)
    top, left, size = plots.worst_crop(a, b, size=15)
    assert (top, left, size) == (30, 50, 15)
    assert plots.worst_crop(a, b)[2] == 15  # default: a quarter of the shorter side


def test_gaussian_ellipses_have_the_gaussians_geometry():
    # Two Gaussians at known pixel centres, sigmas and angles: the 1-sigma ellipses drawn.
    h, w = 40, 60
    theta = np.array([0.3, 2.0])
    p = P.GaussianParams.create(
        means=P.pixel_to_normalized(np.array([[10.0, 12.0], [45.0, 30.0]], np.float32), h, w),
        scales=[[4.0, 1.5], [2.0, 6.0]], colors=[[1, 0, 0], [0, 1, 0]],
        rotation=np.asarray(P.angle_to_raw(theta))[:, None])
    fig = plots.gaussians(np.zeros((h, w, 3)), p)
    (coll,) = fig.axes[0].collections
    np.testing.assert_allclose(coll.get_offsets(), [[10.0, 12.0], [45.0, 30.0]], atol=1e-4)
    np.testing.assert_allclose(coll._widths, [4.0, 2.0], rtol=1e-5)  # half-widths: sigma
    np.testing.assert_allclose(coll._heights, [1.5, 6.0], rtol=1e-5)
    np.testing.assert_allclose(coll._angles, theta, rtol=1e-5)  # radians inside matplotlib
    _png(fig)


def test_every_figure_renders(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (48, 64, 3)).astype(np.float32)
    dec = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)
    from smartsplat_jax.init import smart_init
    import jax

    p, info = smart_init(jax.random.PRNGKey(0), img, 40)
    hist = {"step": [10, 20, 30], "loss": [0.3, 0.2, 0.1], "train_psnr": [12.0, 14.0, 15.0],
            "seconds": [5.0, 5.1, None], "eval": [{"step": 30, "psnr": 15.1, "ssim": 0.5}],
            "qat_start": 20}
    rd = {"SmartSplat": [{"bpp": 0.5, "psnr": 25.0, "ms_ssim": None}],
          "JPEG": [{"bpp": 0.8, "psnr": 24.0, "ms_ssim": None}, {"bpp": 1.6, "psnr": 30.0,
                                                                 "ms_ssim": None}]}
    figs = [plots.compare(img, dec), plots.error_map(img, dec), plots.gaussians(img, p),
            plots.initialization(img, p, info), plots.training_curves(hist),
            plots.rate_distortion(rd), plots.method_curves({"a": hist, "b": hist})]
    for fig in figs:
        _png(fig)
    figs[0].savefig(tmp_path / "compare.png")  # usable without pyplot or a display
    assert (tmp_path / "compare.png").stat().st_size > 1000
    # The error map shows |decoded - original| averaged over RGB.
    (im,) = figs[1].axes[0].images
    np.testing.assert_allclose(im.get_array(), np.abs(dec - img).mean(-1), atol=1e-6)


def test_bad_images_are_refused_by_name():
    with pytest.raises(ValueError, match=r"decoded.*\[H, W, 3\]"):
        plots.compare(np.zeros((8, 8, 3)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="same shape"):
        plots.error_map(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))

