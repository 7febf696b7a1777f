"""LIG (train.lig): its two levels, the area downsampling, the move to full resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.render import render
from smartsplat_jax.train import config_for_method, fit, initialize, train_method
from smartsplat_jax.train import lig


def test_level_sizes_follow_the_authors_rule():
    assert lig.level_sizes(102) == (12, 90)  # int(102 / 4 * 0.5)
    assert lig.level_sizes(7) == (0, 7) and lig.level_sizes(8) == (1, 7)
    assert lig.coarse_size(25, 33) == (12, 16) and lig.coarse_size(1, 3) == (1, 1)


def test_area_downsample_is_the_mean_over_each_cell():
    img = np.random.default_rng(0).uniform(size=(5, 7, 3)).astype(np.float32)
    out = lig.area_downsample(img, 2, 3)
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]  # floor(i H / h), ceil((i+1) H / h)
    want = np.array([[img[a:b, c:d].mean((0, 1)) for c, d in cols] for a, b in rows])
    np.testing.assert_allclose(out, want, rtol=1e-6)
    even = np.random.default_rng(1).uniform(size=(4, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(lig.area_downsample(even, 2, 3),
                               even.reshape(2, 2, 3, 2, 3).mean((1, 3)), rtol=1e-6)


def test_to_full_resolution_maps_pixel_centres_and_scales_the_covariance():
    chol = jnp.asarray([[1.5, 0.4, 0.8]])
    p = P.CholeskyParams(means=P.pixel_to_normalized(jnp.asarray([[3.0, 2.0]]), 10, 12),
                         cholesky=chol, colors=jnp.ones((1, 3)), opacity=jnp.ones((1, 1)))
    q = lig.to_full_resolution(p, (10, 12), (20, 36))  # fy = 2, fx = 3
    np.testing.assert_allclose(P.normalized_to_pixel(q.means, 20, 36), [[3 * 3.0 + 1.0,
                                                                          2 * 2.0 + 0.5]],
                               rtol=1e-6)
    s = np.diag([3.0, 2.0])
    np.testing.assert_allclose(P.covariance(q.to_gaussian_params())[0],
                               s @ P.covariance(p.to_gaussian_params())[0] @ s, rtol=1e-5)
    # A smooth field looks the same: the full-resolution render, area-downsampled, is close
    # to the coarse render (they differ only by the sampling inside each cell).
    key = jax.random.PRNGKey(3)
    coarse = P.CholeskyParams(
        means=jax.random.uniform(key, (6, 2), minval=-0.8, maxval=0.8),
        cholesky=jnp.tile(jnp.asarray([[3.0, 0.5, 2.5]]), (6, 1)),
        colors=jax.random.uniform(jax.random.fold_in(key, 1), (6, 3)) * 0.3,
        opacity=jnp.ones((6, 1)))
    low = np.asarray(render(coarse, 16, 16, backend="xla"))
    high = np.asarray(render(lig.to_full_resolution(coarse, (16, 16), (32, 32)), 32, 32,
                             backend="xla"))
    assert np.max(np.abs(lig.area_downsample(high, 16, 16) - low)) < 0.02


@pytest.fixture(scope="module")
def small_image():
    from smartsplat_jax import DEMO_IMAGE, load_image

    return np.asarray(load_image(DEMO_IMAGE)[200:224, 320:352], np.float32)


def test_lig_trains_level_one_on_what_level_zero_leaves(small_image):
    img = small_image
    n = 64
    config = config_for_method("lig", steps=20, chunk_steps=10, eval_every=0,
                               checkpoint_every=0, backend="xla")
    params0, info = initialize("lig", jax.random.PRNGKey(0), img, n)
    n0, n1 = lig.level_sizes(n)
    assert info["levels"] == [n0, n1] == [8, 56] and params0.num == n
    out, history = train_method("lig", img, params0, config, progress=False)
    assert isinstance(out, P.CholeskyParams) and out.num == n
    assert history["levels"][0]["num_gaussians"] == n0
    # Level 0 is level 0's own fit at 12 x 16, moved to 24 x 32, untouched by level 1.
    h, w = lig.coarse_size(24, 32)
    level0, _ = fit(lig.area_downsample(img, h, w),
                    jax.tree_util.tree_map(lambda a: a[:n0], params0),
                    lig._at_size(config, h, w), progress=False)
    moved = lig.to_full_resolution(level0, (h, w), (24, 32))
    for a, b in zip(jax.tree_util.tree_leaves(moved),
                    jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: a[:n0], out))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Level 1 moved, and the two levels together render better than level 0 alone.
    assert not np.array_equal(np.asarray(out.means[n0:]), np.asarray(params0.means[n0:]))
    both = metrics.psnr(np.asarray(render(out, 24, 32, backend="xla")), img)
    alone = metrics.psnr(np.asarray(render(moved, 24, 32, backend="xla")), img)
    assert both > alone + 1.0, (both, alone)


def test_lig_refuses_a_quantizer_or_an_optimizer(small_image):
    import optax

    config = config_for_method("lig", steps=2, backend="xla")
    params0, _ = initialize("lig", jax.random.PRNGKey(0), small_image, 16)
    with pytest.raises(ValueError, match=r"optimizer=.*LIG trains with its own optimizer"):
        lig.fit_lig(small_image, params0, config, optimizer=optax.adam(1e-3))
