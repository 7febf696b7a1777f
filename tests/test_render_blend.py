"""render.blend: front-to-back alpha blending (the 3DGS baseline's compositing) against the
dense oracle, by hand, and by finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from smartsplat_jax import params as P
from smartsplat_jax.render.blend import (ALPHA_MAX, T_MIN, render_blend,
                                         render_blend_reference)

from helpers import enable_x64, scene, smooth_scene


def _opaque_pile(p: P.GaussianParams, h: int, w: int, k: int = 6) -> P.GaussianParams:
    """`p` with k nearly opaque round Gaussians stacked at the front over pixel (5, 4), so
    that 3DGS's early termination (T < 1e-4) cuts off everything behind them there."""
    dt = p.means.dtype
    pile = P.GaussianParams.create(
        means=jnp.tile(jnp.asarray([[2 * 5.3 / w - 1, 2 * 4.2 / h - 1]], dt), (k, 1)),
        scales=jnp.full((k, 2), 3.0, dt), colors=jnp.linspace(0.1, 0.9, 3 * k).reshape(k, 3),
        rotation=jnp.zeros((k, 1), dt), opacity=jnp.full((k, 1), 1.5, dt), dtype=dt)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), pile, p)


def test_two_gaussians_blend_by_hand():
    # At the pixel under both centres: alpha = min(0.99, o); C = c0 a0 + c1 a1 (1 - a0).
    p = P.GaussianParams.create(means=[[0.0, 0.0], [0.0, 0.0]], scales=[[2.0, 2.0], [3.0, 1.0]],
                                colors=[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]],
                                opacity=[[0.6], [0.8]])
    h = w = 8  # normalized (0, 0) is pixel (4, 4)
    img = render_blend(p, h, w, chunk=4, background=0.0)
    a0, a1 = 0.6, 0.8
    np.testing.assert_allclose(img[4, 4], [a0, a1 * (1 - a0), 0.5 * a0 + 0.5 * a1 * (1 - a0)],
                               rtol=1e-6)
    flipped = jax.tree_util.tree_map(lambda a: a[::-1], p)  # order matters, unlike the sum
    np.testing.assert_allclose(render_blend(flipped, h, w, background=0.0)[4, 4],
                               [a0 * (1 - a1), a1, 0.5 * a1 + 0.5 * a0 * (1 - a1)], rtol=1e-6)
    opaque = p.replace(opacity=jnp.asarray([[5.0], [5.0]]))  # alpha clamps at 0.99
    np.testing.assert_allclose(render_blend(opaque, h, w, background=0.0)[4, 4, 0], ALPHA_MAX,
                               rtol=1e-6)
    # Over the default white background, what both let through: + (1 - a0)(1 - a1).
    t_end = (1 - a0) * (1 - a1)
    np.testing.assert_allclose(render_blend(p, h, w, clamp=False)[4, 4],
                               np.asarray(img[4, 4]) + t_end, rtol=1e-6)


def test_blend_equals_the_dense_oracle_with_gradients_float64():
    with enable_x64():
        h, w = 13, 17
        p = scene(3, 40, h, w, extras=False, dtype=jnp.float64)
        p = _opaque_pile(p.replace(opacity=jnp.clip(p.opacity, 0.05, 1.0)), h, w)
        ref = render_blend_reference(p, h, w, clamp=False)
        # Under the pile (alpha 0.99 each) the transmittance after two is 1e-4 (kept) and
        # after three 1e-6 (cut): only the first two show, whatever lies behind, and the
        # white background through what those two let pass.
        a = ALPHA_MAX
        assert (1 - a) ** 2 >= T_MIN > (1 - a) ** 3
        np.testing.assert_allclose(ref[4, 5], p.colors[0] * a + p.colors[1] * a * (1 - a)
                                   + (1 - a) ** 2, rtol=1e-12)
        for chunk in (7, 32, 4096):  # runs of one tile split across chunks, and one chunk
            out = render_blend(p, h, w, chunk=chunk, clamp=False)
            np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13, err_msg=str(chunk))
        wgt = jnp.asarray(np.random.default_rng(0).normal(size=(h, w, 3)))
        for bg in (1.0, 0.0, 0.3):  # the background's share of every Gaussian's gradient
            ga = jax.grad(lambda q: jnp.sum(
                render_blend(q, h, w, chunk=32, clamp=False, background=bg) * wgt))(p)
            gb = jax.grad(lambda q: jnp.sum(
                render_blend_reference(q, h, w, clamp=False, background=bg) * wgt))(p)
            chex.assert_trees_all_close(ga, gb, rtol=1e-10, atol=1e-11)


def test_blend_float32_awkward_scene_matches_the_oracle():
    # A huge Gaussian, a singular one, 300 piled in one tile, ones outside the image.
    h, w = 16, 20
    p = scene(7, 30, h, w, extras=True)
    p = p.replace(opacity=jnp.clip(p.opacity, 0.0, 1.0))
    out = jax.jit(lambda q: render_blend(q, h, w, chunk=256))(p)
    np.testing.assert_allclose(out, render_blend_reference(p, h, w), atol=2e-5)
    tgt = jnp.asarray(np.random.default_rng(1).random((h, w, 3)), jnp.float32)
    g = jax.grad(lambda q: jnp.mean((render_blend(q, h, w, chunk=256) - tgt) ** 2))(p)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))


def test_blend_check_grads_tiny_scene():
    with enable_x64():
        check_grads(lambda q: render_blend(q, 9, 11, chunk=16, clamp=False), (smooth_scene(),),
                    order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_blend_takes_cholesky_params_and_empty_params():
    cp = P.CholeskyParams(means=jnp.asarray([[0.1, -0.2], [0.0, 0.1]]),
                          cholesky=jnp.asarray([[1.5, 0.4, 1.0], [2.0, -0.5, 1.2]]),
                          colors=jnp.asarray([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3]]),
                          opacity=jnp.asarray([[0.9], [0.7]]))
    np.testing.assert_allclose(render_blend(cp, 10, 12),
                               render_blend(cp.to_gaussian_params(), 10, 12), atol=2e-6)
    empty = jax.tree_util.tree_map(lambda a: a[:0], cp.to_gaussian_params())
    np.testing.assert_array_equal(render_blend(empty, 5, 6), np.ones((5, 6, 3)))  # white
    np.testing.assert_array_equal(render_blend(empty, 5, 6, background=0.25),
                                  np.full((5, 6, 3), 0.25))
    with pytest.raises(ValueError, match="use render_blend"):
        render_blend_reference(jax.tree_util.tree_map(lambda a: jnp.tile(a, (3000, 1)),
                                                      cp.to_gaussian_params()), 300, 300)
