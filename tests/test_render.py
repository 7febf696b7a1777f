"""smartsplat_jax.render: xla backend vs the dense reference, gradients, chunking, resizing."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from smartsplat_jax import params as P
from smartsplat_jax.render import (pair_count, render, render_reference, render_xla,
                                   rescale_params, resolve_backend)
from smartsplat_jax.render import xla as X

from helpers import enable_x64, scene, smooth_scene


SIZES = [(1, 1), (1, 17), (13, 1), (21, 37), (32, 32), (45, 29)]


@pytest.mark.parametrize("h,w", SIZES)
def test_xla_equals_reference_float32(h, w):
    p = scene(h * 100 + w, 200, h, w)
    assert pair_count(p, h, w, 4) > 0
    a = render(p, h, w, backend="xla")
    b = render(p, h, w, backend="reference")
    chex.assert_shape(a, (h, w, 3))
    chex.assert_type(a, jnp.float32)
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-5


def test_more_than_256_gaussians_in_a_tile_all_count():
    # 600 faint Gaussians on one pixel: the sum needs all 600 (the authors' kernel stops at 256).
    n = 600
    p = P.GaussianParams.create(means=np.zeros((n, 2)), scales=np.full((n, 2), 0.6),
                                colors=np.full((n, 3), 1.0 / 1000))
    img = render(p, 8, 8, backend="xla", tile=4)
    # Pixel (4, 4) is the centre (x = 0 -> 0.5 * 8); alpha = 1 there.
    assert float(img[4, 4, 0]) == pytest.approx(0.6, rel=1e-5)
    np.testing.assert_allclose(img, render(p, 8, 8, backend="reference"), atol=1e-5)


@pytest.mark.parametrize("tile,chunk", [(4, 64), (8, 256), (16, 1024), (4, 1 << 15)])
def test_tiles_and_chunks_do_not_change_the_image(tile, chunk):
    p = scene(7, 300, 40, 50)
    total = pair_count(p, 40, 50, tile)
    assert total > chunk or chunk == 1 << 15  # several loop iterations for the small chunks
    a = render(p, 40, 50, backend="xla", tile=tile, chunk=chunk)
    b = render(p, 40, 50, backend="reference")
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-5


def test_needles_and_singular_exact_in_float64():
    with enable_x64():
        p = scene(3, 150, 30, 41, aniso=200.0, min_scale=0.01, dtype=jnp.float64)
        a = render_xla(p, 30, 41, chunk=128, clamp=False)
        b = render_reference(p, 30, 41, clamp=False)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-9


def test_gradients_equal_reference_float64():
    with enable_x64():
        h, w = 19, 23
        p = scene(11, 120, h, w, aniso=20.0, min_scale=0.1, dtype=jnp.float64)
        # Some centres exactly on pixel centres (min(1, o e^-q) tie at q = 0).
        p = p.replace(means=p.means.at[:4].set(2.0 * jnp.array([[3, 4], [10, 2], [0, 0], [7, 7]])
                                              / jnp.array([w, h]) - 1.0))
        wgt = jnp.asarray(np.random.default_rng(0).normal(size=(h, w, 3)))
        ga = jax.grad(lambda q: jnp.sum(render_xla(q, h, w, chunk=64) * wgt))(p)
        gb = jax.grad(lambda q: jnp.sum(render_reference(q, h, w) * wgt))(p)
        for name in ("means", "scales", "rotation", "colors", "opacity"):
            x, y = getattr(ga, name), getattr(gb, name)
            assert float(jnp.max(jnp.abs(x - y))) <= 1e-8 * (1.0 + float(jnp.max(jnp.abs(y)))), name


def test_gradients_equal_reference_float32_through_render():
    h, w = 24, 31
    p = scene(5, 150, h, w, extras=False)
    tgt = jnp.asarray(np.random.default_rng(1).random((h, w, 3)), jnp.float32)
    loss = lambda q, be: jnp.mean((render(q, h, w, backend=be) - tgt) ** 2)
    ga = jax.jit(jax.grad(lambda q: loss(q, "xla")))(p)
    gb = jax.grad(lambda q: loss(q, "reference"))(p)
    chex.assert_trees_all_equal_shapes_and_dtypes(ga, p)
    for name in ("means", "scales", "rotation", "colors", "opacity"):
        x, y = getattr(ga, name), getattr(gb, name)
        rel = float(jnp.max(jnp.abs(x - y))) / (float(jnp.max(jnp.abs(y))) + 1e-12)
        assert rel <= 1e-4, (name, rel)


def test_check_grads_tiny_scene():
    with enable_x64():
        p = smooth_scene()
        f = lambda q: render_xla(q, 9, 11, chunk=16)
        check_grads(f, (p,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_outside_and_culled_gaussians_contribute_nothing():
    p = P.GaussianParams.create(
        means=[[5.0, 5.0], [-3.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        scales=[[1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [jnp.nan, 1.0]],
        colors=np.ones((4, 3)), opacity=[[1.0], [1.0], [1.0 / 300], [1.0]])
    assert pair_count(p, 16, 16) == 0
    img = render(p, 16, 16, backend="xla")
    assert float(jnp.max(img)) == 0.0
    grads = jax.grad(lambda q: jnp.sum(render(q, 16, 16, backend="xla")))(p)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_cull_box_is_a_superset_of_kept_pixels():
    # Every pixel with alpha >= 1/255 by the dense definition lies in a binned tile.
    p = scene(21, 400, 50, 60, aniso=30.0, min_scale=0.05, extras=False)
    proj = X.project(p, 50, 60, tile=1)  # tile 1: the box itself, pixel by pixel
    mu = P.normalized_to_pixel(p.means, 50, 60)
    for g in range(0, 400, 7):
        one = jax.tree_util.tree_map(lambda x: x[g:g + 1], p)
        raw = render_reference(one.replace(colors=jnp.ones((1, 3))), 50, 60, clamp=False)
        ys, xs = np.nonzero(np.asarray(raw[..., 0]) > 0)
        if len(xs) == 0:
            continue
        x0, y0, wx = int(proj.tx0[g]), int(proj.ty0[g]), int(proj.wx[g])
        hy = int(proj.counts[g]) // wx
        assert xs.min() >= x0 and xs.max() < x0 + wx, (g, mu[g])
        assert ys.min() >= y0 and ys.max() < y0 + hy, (g, mu[g])


def test_window_is_the_whole_render_there_bit_for_bit():
    # A window of the image, at a traced position, even one reaching past the edges: the
    # same pixels as the whole render (same alphas, summed in the same Gaussian order), and
    # gradients equal to the order of the per-tile sums. Means at integer pixels (as the
    # initialization places them) and alphas at the 1/255 threshold are where a shift of the
    # means into the window's frame changed gradients by up to 10 %.
    h, w = 48, 64
    p = scene(5, 400, h, w, aniso=6.0, min_scale=0.3, extras=False)
    pix = jnp.round(P.normalized_to_pixel(p.means, h, w))
    p = p.replace(means=P.pixel_to_normalized(pix, h, w))
    full = render_xla(p, h, w, clamp=False)
    cot = jax.random.uniform(jax.random.PRNGKey(0), (h, w, 3))
    g_full = jax.grad(lambda q: jnp.sum(cot * render_xla(q, h, w, clamp=False)))(p)

    @jax.jit
    def windowed(q, top, left):
        return render_xla(q, 30, 40, window=X.Window(h, w, top, left), clamp=False)

    for top, left in ((0, 0), (9, 13), (-5, -7), (23, 29)):
        win = windowed(p, top, left)
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + 30, h), min(left + 40, w)
        np.testing.assert_array_equal(np.asarray(win[r0 - top:r1 - top, c0 - left:c1 - left]),
                                      np.asarray(full[r0:r1, c0:c1]))
    # four windows of 30 x 40 covering the image (with 6 x 8 overlaps and edges beyond it):
    # each pixel's cotangent counted once, by the window that owns it.
    grads = []
    for top, left in ((0, 0), (0, 32), (24, 0), (24, 32)):
        # the window owns its first 24 rows and 32 columns
        own = (np.arange(30) < 24)[:, None] & (np.arange(40) < 32)[None, :]
        c = jnp.pad(cot, ((0, 6), (0, 8), (0, 0)))[top:top + 30, left:left + 40]
        c = jnp.where(own[..., None], c, 0.0)
        grads.append(jax.grad(lambda q: jnp.sum(c * windowed(q, top, left)))(p))
    g_win = jax.tree_util.tree_map(lambda *g: sum(g), *grads)
    for a, b in zip(jax.tree_util.tree_leaves(g_win), jax.tree_util.tree_leaves(g_full)):
        assert float(jnp.max(jnp.abs(a - b))) <= 2e-6 * float(jnp.max(jnp.abs(b)))


def test_resolution_helper_matches_dense_sampling():
    h, w = 20, 30
    p = scene(9, 80, h, w, extras=False)
    for (h2, w2) in [(40, 60), (20, 45), (35, 30)]:
        q = rescale_params(p, (h, w), (h2, w2))
        fy, fx = h2 / h, w2 / w
        ys, xs = jnp.meshgrid(jnp.arange(h2) / fy, jnp.arange(w2) / fx, indexing="ij")
        dense = render_reference(p, h, w, sample_xy=jnp.stack([xs, ys], -1))
        got = render(q, h2, w2, backend="xla")
        assert float(jnp.max(jnp.abs(got - dense))) <= 2e-5, (h2, w2)


def test_render_bad_inputs():
    p = scene(0, 5, 4, 4, extras=False)
    with pytest.raises(ValueError, match="height=0"):
        render(p, 0, 4)
    with pytest.raises(ValueError, match="backend='cuda'"):
        render(p, 4, 4, backend="cuda")
    with pytest.raises(ValueError, match=r"colors has shape \(5, 2\)"):
        render(p.replace(colors=p.colors[:, :2]), 4, 4)
    with pytest.raises(ValueError, match="src_hw"):
        rescale_params(p, (0, 3), (4, 4))
    assert resolve_backend("auto") == "xla"


def test_render_jits_with_static_size_and_empty_params():
    p = scene(0, 10, 6, 7, extras=False)
    f = jax.jit(render, static_argnames=("height", "width", "backend"))
    np.testing.assert_allclose(f(p, height=6, width=7, backend="xla"), render(p, 6, 7), atol=0)
    empty = P.GaussianParams.create(means=np.zeros((0, 2)), scales=np.zeros((0, 2)),
                                    colors=np.zeros((0, 3)))
    assert float(jnp.sum(render(empty, 5, 5))) == 0.0


def test_public_functions_shapes_and_dtypes():
    p = scene(4, 30, 12, 20, extras=False)
    n = p.means.shape[0]
    proj = X.project(p, 12, 20, tile=4)
    chex.assert_shape(proj.feats, (n, X.NUM_FEATURES))
    chex.assert_type(proj.feats, jnp.float32)
    chex.assert_shape([proj.tx0, proj.ty0, proj.wx, proj.counts], (n,))
    chex.assert_type([proj.tx0, proj.ty0, proj.wx, proj.counts], jnp.int32)
    for img in (render_xla(p, 12, 20), render_reference(p, 12, 20), render(p, 12, 20)):
        chex.assert_shape(img, (12, 20, 3))
        chex.assert_type(img, jnp.float32)
        assert float(jnp.min(img)) >= 0.0 and float(jnp.max(img)) <= 1.0
    q = rescale_params(p, (12, 20), (24, 30))
    chex.assert_trees_all_equal_shapes_and_dtypes(q, p)
    assert isinstance(pair_count(p, 12, 20), int) and pair_count(p, 12, 20, tile=4) == int(proj.counts.sum())


# ---- GaussianImage's Cholesky parameterisation -------------------------------------------------


def _cholesky_scene(seed, n, dtype=jnp.float32):
    """Random CholeskyParams: factors of either sign, two isotropic (l21 = 0, l11 = l22),
    colours outside [0, 1]."""
    rng = np.random.default_rng(seed)
    chol = rng.uniform(0.3, 3.0, (n, 3)) * rng.choice([-1.0, 1.0], (n, 3))
    chol[:2] = [[1.5, 0.0, 1.5], [2.0, 0.0, -2.0]]
    return P.CholeskyParams(means=jnp.asarray(rng.uniform(-1.1, 1.1, (n, 2)), dtype),
                            cholesky=jnp.asarray(chol, dtype),
                            colors=jnp.asarray(rng.uniform(-0.2, 1.2, (n, 3)), dtype),
                            opacity=jnp.asarray(rng.uniform(0.5, 1.0, (n, 1)), dtype))


def test_cholesky_params_render_as_their_scales_and_angles():
    h, w = 21, 26
    cp = _cholesky_scene(0, 60)
    gp = cp.to_gaussian_params()
    l11, l21, l22 = P.cholesky_factor(cp.cholesky)
    lower = jnp.stack([jnp.stack([l11, jnp.zeros_like(l11)], -1), jnp.stack([l21, l22], -1)], -2)
    sigma = lower @ jnp.swapaxes(lower, -1, -2)
    np.testing.assert_allclose(P.covariance(gp), sigma, rtol=2e-5, atol=1e-6)
    assert bool(jnp.all(gp.scales[:, 0] >= gp.scales[:, 1]))  # major axis first
    # A needle (|l22| below the floor): its minor axis is raised to the floor, as the file and
    # every GaussianParams renderer have it.
    needle = P.CholeskyParams(means=jnp.zeros((1, 2)), cholesky=jnp.asarray([[0.7, 2.5, 1e-4]]),
                              colors=jnp.ones((1, 3)), opacity=jnp.ones((1, 1)))
    s_needle = needle.to_gaussian_params().scales
    assert float(s_needle[0, 1]) == P.SCALE_FLOOR
    lower = np.array([[0.7, 0.0], [2.5, P.SCALE_FLOOR]])  # l22 on the floor
    major = np.sqrt(np.linalg.eigvalsh(lower @ lower.T)[-1])
    np.testing.assert_allclose(float(s_needle[0, 0]), major, rtol=1e-6)
    for backend in ("reference", "xla"):
        np.testing.assert_allclose(render(cp, h, w, backend=backend),
                                   render(gp, h, w, backend=backend), atol=2e-6, err_msg=backend)
    np.testing.assert_allclose(render(cp, h, w, backend="xla"),
                               render_reference(cp, h, w), atol=1e-6)


def test_cholesky_gradients_equal_reference_and_finite_differences():
    with enable_x64():
        h, w = 13, 17
        cp = _cholesky_scene(1, 40, jnp.float64)
        wgt = jnp.asarray(np.random.default_rng(2).normal(size=(h, w, 3)))
        ga = jax.grad(lambda q: jnp.sum(render_xla(q, h, w, chunk=64) * wgt))(cp)
        gb = jax.grad(lambda q: jnp.sum(render_reference(q, h, w) * wgt))(cp)
        chex.assert_trees_all_close(ga, gb, rtol=1e-8, atol=1e-10)
        # Smooth region: centres off the pixel grid, alphas < 1, factors off the floor.
        small = P.CholeskyParams(
            means=jnp.asarray([[-0.31, 0.12], [0.27, -0.43]]),
            cholesky=jnp.asarray([[1.7, 0.6, 1.2], [-1.4, -0.9, 2.1]]),
            colors=jnp.asarray([[0.2, 0.5, 0.1], [0.3, 0.1, 0.4]]),
            opacity=jnp.asarray([[0.7], [0.6]]))
        check_grads(lambda q: render_xla(q, 9, 11, chunk=16), (small,), order=1,
                    modes=("rev",), atol=1e-5, rtol=1e-5)
