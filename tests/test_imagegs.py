"""ImageGS* (train.imagegs): content-adaptive init, progressive addition, static shapes."""

import jax
import numpy as np
import pytest

from smartsplat_jax import params as P
from smartsplat_jax.train import config_for_method, fit, initialize, train_method
from smartsplat_jax.train import imagegs as G


def test_stages_and_addition_interval():
    assert G.stage_sizes(102) == [51, 64, 77, 90, 102]
    assert G.stage_sizes(8) == [4, 5, 6, 7, 8]
    assert [G.add_steps(s) for s in (30, 3000, 10_000, 50_000)] == [3, 375, 500, 500]


def _edge_image(h=20, w=24):
    img = np.zeros((h, w, 3), np.float32)
    img[:, w // 2:] = 0.8
    return img


def test_gradient_probability_lies_on_the_edge():
    prob = G.gradient_probability(_edge_image()).reshape(20, 24)
    assert prob.sum() == pytest.approx(1.0)
    assert set(np.nonzero(prob.sum(0))[0]) == {11, 12}  # central differences either side
    flat = G.gradient_probability(np.full((4, 5, 3), 0.3, np.float32))
    np.testing.assert_allclose(flat, np.full(20, 1 / 20))


def test_error_probability_is_the_squared_mean_error():
    rng = np.random.default_rng(0)
    t, r = rng.uniform(size=(6, 7, 3)), rng.uniform(-0.2, 1.2, size=(6, 7, 3))
    prob, err = G.error_probability(r, t)  # 6 x 7: no blur (kernel size rounds to 0)
    np.testing.assert_allclose(err, t - np.clip(r, 0, 1), atol=1e-7)  # float32
    w = np.mean(np.abs(t - np.clip(r, 0, 1)), -1).ravel() ** 2
    np.testing.assert_allclose(prob, w / w.sum(), rtol=1e-4)


def test_init_puts_half_the_gaussians_on_pixels_with_their_colours():
    img = _edge_image()
    params, info = initialize("imagegs", jax.random.PRNGKey(0), img, 40)
    n0 = info["stages"][0]
    assert params.num == 40 and n0 == 20
    op = np.asarray(params.opacity[:, 0])
    np.testing.assert_array_equal(op, [1.0] * n0 + [0.0] * (40 - n0))
    xy = np.asarray(P.normalized_to_pixel(params.means[:n0], 20, 24))
    np.testing.assert_allclose(xy, np.round(xy), atol=1e-4)  # pixel centres
    x, y = np.round(xy).astype(int).T
    assert len(set(zip(x, y))) == n0  # without replacement
    np.testing.assert_allclose(np.asarray(params.colors[:n0]), img[y, x], atol=1e-6)
    np.testing.assert_allclose(np.asarray(params.scales[:n0]), G.INIT_SCALE)
    n_random = round(G.INIT_RANDOM_RATIO * n0)
    assert np.all(np.isin(x[n_random:], [11, 12]))  # the gradient-drawn ones: on the edge


def test_gaussians_not_yet_added_do_not_move_and_stages_add_them(small_photo):
    img = small_photo
    config = config_for_method("imagegs", steps=24, chunk_steps=6, eval_every=0,
                               checkpoint_every=0, backend="xla")
    params0, info = initialize("imagegs", jax.random.PRNGKey(1), img, 48)
    n0 = info["stages"][0]
    stage0, _ = fit(img, params0, config_for_method("imagegs", steps=3, eval_every=0,
                                                     chunk_steps=6, backend="xla"),
                    progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(stage0), jax.tree_util.tree_leaves(params0)):
        np.testing.assert_array_equal(np.asarray(a)[n0:], np.asarray(b)[n0:])
    assert not np.array_equal(np.asarray(stage0.means[:n0]), np.asarray(params0.means[:n0]))
    out, history = train_method("imagegs", img, params0, config, key=jax.random.PRNGKey(2),
                                progress=False)
    assert [s["active"] for s in history["stages"]] == info["stages"]
    assert [s["steps"] for s in history["stages"]] == [3, 3, 3, 3, 12]
    np.testing.assert_array_equal(np.asarray(out.opacity), 1.0)
    again, _ = train_method("imagegs", img, params0, config, key=jax.random.PRNGKey(2),
                            progress=False)
    np.testing.assert_array_equal(np.asarray(again.means), np.asarray(out.means))
    with pytest.raises(ValueError, match=r"steps=7 must be at least 8 for imagegs"):
        train_method("imagegs", img, params0, config_for_method("imagegs", steps=7),
                     progress=False)


@pytest.fixture(scope="module")
def small_photo():
    from smartsplat_jax import DEMO_IMAGE, load_image

    return np.asarray(load_image(DEMO_IMAGE)[200:224, 320:352], np.float32)
