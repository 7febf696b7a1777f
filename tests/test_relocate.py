"""train.relocate: invisible Gaussians moved to where the render's error is."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smartsplat_jax import DEMO_IMAGE, load_image, metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec import prune as PR
from smartsplat_jax.init.smart import smart_init
from smartsplat_jax.init.variational import s_base
from smartsplat_jax.render import render
from smartsplat_jax.train import (METHODS, config_for_method, default_relocate_every, fit,
                                  initialize)
from smartsplat_jax.train.config import RELOCATABLE_METHODS
from smartsplat_jax.train.relocate import check_relocatable, relocate, relocates_at


@pytest.fixture(scope="module")
def crop_with_dead():
    """A 64 x 96 photo crop; 300 Gaussians from the smart init, then 100 collapsed ones (at
    the scale floor between pixel centres: drawn nowhere) in rows 300 on."""
    img = load_image(DEMO_IMAGE)[180:244, 320:416]
    h, w = img.shape[:2]
    live, _ = smart_init(jax.random.PRNGKey(3), img, 300)
    rng = np.random.default_rng(0)
    px = np.stack([rng.integers(2, w - 2, 100) + 0.5, rng.integers(2, h - 2, 100) + 0.5], 1)
    dead = P.GaussianParams.create(
        means=P.pixel_to_normalized(jnp.asarray(px, jnp.float32), h, w),
        scales=np.full((100, 2), 2.0 ** -6), colors=rng.uniform(0, 1, (100, 3)))
    p = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), live, dead)
    return jnp.asarray(img), p


def test_relocates_at_whole_intervals_of_float_training():
    assert [s for s in range(0, 2001, 100) if relocates_at(s, 500, 2000)] == [500, 1000, 1500]
    assert not any(relocates_at(s, 0, 2000) for s in range(0, 2001, 100))
    assert [s for s in range(0, 1001, 100) if relocates_at(s, 300, 980)] == [300, 600]


def test_relocate_moves_the_invisible_ones_to_the_error(crop_with_dead):
    img, p = crop_with_dead
    h, w = img.shape[:2]
    state = optax.adam(1e-3).init(p)
    state = jax.tree_util.tree_map(lambda a: a + 1 if a.ndim else a, state)  # non-zero moments
    rendered = render(p, h, w, backend="xla")
    q, s2, moved = relocate(p, state, img, jax.random.PRNGKey(7), rendered=rendered)
    dead = PR.invisible(p, h, w)
    assert moved == int(dead.sum()) >= 100 and dead[300:].all()
    rows = np.nonzero(dead)[0]
    keep = ~dead
    for a, b in zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(p)):
        np.testing.assert_array_equal(np.asarray(a)[keep], np.asarray(b)[keep])
    # At distinct pixel centres, isotropic at s_base, angle 0, coloured with the residual.
    xy = np.asarray(P.normalized_to_pixel(q.means[rows], h, w))
    np.testing.assert_allclose(xy, np.round(xy), atol=1e-3)
    ij = np.round(xy).astype(int)
    assert len({tuple(v) for v in ij}) == moved
    np.testing.assert_allclose(np.asarray(q.scales)[rows], s_base(h, w, p.num), rtol=1e-6)
    assert np.all(np.asarray(q.rotation)[rows] == 0)
    residual = np.asarray(img - rendered)[ij[:, 1], ij[:, 0]]
    np.testing.assert_allclose(np.asarray(q.colors)[rows], residual, atol=1e-6)
    # Drawn where the error is: the moved ones sit on pixels of above-average error.
    err = np.abs(np.asarray(img - rendered)).mean(-1)
    assert err[ij[:, 1], ij[:, 0]].mean() > 1.5 * err.mean()
    # Visible now; their optimizer moments restart from zero, the others' are untouched.
    assert not PR.invisible(q, h, w)[rows].any()
    for a, b in zip(jax.tree_util.tree_leaves(s2), jax.tree_util.tree_leaves(state)):
        if a.ndim and a.shape[0] == p.num:
            assert np.all(np.asarray(a)[rows] == 0)
            np.testing.assert_array_equal(np.asarray(a)[keep], np.asarray(b)[keep])
        else:
            np.testing.assert_array_equal(a, b)
    # Deterministic for a key; nothing to do when nothing is invisible.
    again = relocate(p, state, img, jax.random.PRNGKey(7), rendered=rendered)[0]
    np.testing.assert_array_equal(again.means, q.means)
    assert relocate(q, s2, img, jax.random.PRNGKey(7))[2] == 0


def test_fit_relocates_and_gains(crop_with_dead):
    """A fit that relocates every 20 steps ends well above the same fit without relocation
    (a quarter of its Gaussians were drawn nowhere) and records what it moved."""
    img, p = crop_with_dead
    h, w = img.shape[:2]
    psnr = {}
    for every in (0, 20):
        cfg = config_for_method("smartsplat", steps=60, chunk_steps=10, eval_every=0,
                                checkpoint_every=0, backend="xla", relocate_every=every)
        params, hist = fit(img, p, cfg, progress=False)
        psnr[every] = metrics.psnr(render(params, h, w, backend="xla"), img)
        if every:
            assert [r["step"] for r in hist["relocated"]] == [20, 40]
            assert hist["relocated"][0]["moved"] >= 100
        else:
            assert hist["relocated"] == []
    assert psnr[20] > psnr[0] + 1.0


def test_relocation_is_refused_where_it_does_not_apply(crop_with_dead):
    img, p = crop_with_dead
    with pytest.raises(ValueError, match="relocate_every=-1"):
        config_for_method("smartsplat", relocate_every=-1)
    cfg = config_for_method("3dgs", steps=2, relocate_every=1)
    with pytest.raises(ValueError, match="relocate_every=1 needs an additive set"):
        fit(img, p.replace(blend=True), cfg, progress=False)
    with pytest.raises(ValueError, match="additive set of GaussianParams"):
        relocate(p.replace(blend=True), None, img, jax.random.PRNGKey(0))


@pytest.mark.parametrize("method", METHODS)
def test_relocatable_methods_are_those_whose_init_relocation_accepts(crop_with_dead, method):
    # RELOCATABLE_METHODS (the launchers' early refusal) agrees with check_relocatable on
    # each method's own initialization.
    img, _ = crop_with_dead
    params, _ = initialize(method, jax.random.PRNGKey(0), img, 40)
    if method in RELOCATABLE_METHODS:
        check_relocatable(params)
    else:
        with pytest.raises(ValueError, match="additive set of GaussianParams"):
            check_relocatable(params)


def test_default_relocate_every_by_hand():
    # min(500, steps // 4) for SmartSplat runs of at least 400 steps; never for the baselines.
    assert [default_relocate_every("smartsplat", s) for s in (20, 399, 400, 1000, 1999, 2000,
                                                               50_000)] == [
        0, 0, 100, 250, 499, 500, 500]
    assert {default_relocate_every(m, 5000) for m in METHODS if m != "smartsplat"} == {0}
    # With the default quantization-aware phase (2 %, at least 20 steps), a 1,000-step run
    # relocates at steps 250 and 500 and a 400-step run at 100 and 200.
    for steps, at in ((1000, [250, 500]), (400, [100, 200]), (2000, [500, 1000])):
        every = default_relocate_every("smartsplat", steps)
        stop = steps - config_for_method("smartsplat", steps=steps).qat_steps_used
        assert [s for s in range(steps) if relocates_at(s, every, stop)] == at
