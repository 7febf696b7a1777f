"""codec.prune and the encoder's rule: Gaussians the render does not need leave the file."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import scene
from smartsplat_jax import DEMO_IMAGE, codec, load_image, metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec import prune as PR
from smartsplat_jax.codec.format import dropped
from smartsplat_jax.codec.rate import BudgetQuantizer, byte_budget, spec_for_budget
from smartsplat_jax.init.smart import smart_init
from smartsplat_jax.render import render
from smartsplat_jax.render.xla import render_xla
from smartsplat_jax.train import config_for_method, fit


def _concat(a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


def _collapsed(h, w, k, seed=0):
    """k Gaussians as long training leaves some: at the scale floor, centred between pixel
    centres (so the rasterizer draws them nowhere), with large colours."""
    rng = np.random.default_rng(seed)
    px = np.stack([rng.integers(2, w - 2, k) + 0.5, rng.integers(2, h - 2, k) + 0.5], 1)
    return P.GaussianParams.create(
        means=P.pixel_to_normalized(jnp.asarray(px, jnp.float32), h, w),
        scales=np.full((k, 2), 2.0 ** -6), colors=rng.uniform(-2.0, 3.0, (k, 3)),
        rotation=rng.normal(0, 1, (k, 1)))


def _faint(h, w, k, seed=1):
    """k Gaussians of a few pixels whose colours are almost 0: drawn, but adding < 1e-6."""
    rng = np.random.default_rng(seed)
    return P.GaussianParams.create(means=rng.uniform(-0.8, 0.8, (k, 2)),
                                   scales=rng.uniform(2.0, 4.0, (k, 2)),
                                   colors=rng.uniform(-1e-7, 1e-7, (k, 3)))


@pytest.fixture(scope="module")
def photo_with_dead():
    """A 64 x 96 photo crop, N = 300 Gaussians from the smart init, then 100 collapsed ones
    and 5 faint ones (rows 300 on)."""
    img = load_image(DEMO_IMAGE)[180:244, 320:416]
    h, w = img.shape[:2]
    live, _ = smart_init(jax.random.PRNGKey(3), img, 300)
    return img, live, _concat(_concat(live, _collapsed(h, w, 100)), _faint(h, w, 5))


def test_render_mass_is_each_gaussians_total_weight():
    """m_i, a gradient, equals the sum of the forward render of Gaussian i alone with colour
    (1, 0, 0), unclamped (the rasterizer's footprint included)."""
    h, w = 24, 32
    p = scene(4, 12, h, w, extras=False)
    m = np.asarray(PR.render_mass(p, h, w))
    for i in range(p.num):
        one = jax.tree_util.tree_map(lambda a: a[i:i + 1], p).replace(
            colors=jnp.asarray([[1.0, 0.0, 0.0]]))
        total = float(jnp.sum(render_xla(one, h, w, clamp=False)))
        assert m[i] == pytest.approx(total, rel=1e-5, abs=1e-6)
    assert m.max() > 1.0 and np.all(m >= 0)


def test_the_bound_holds_and_is_not_vacuous():
    """Whatever max_mse, removing the `invisible` Gaussians moves the unclamped render by a
    mean squared amount of at most max_mse; at larger tolerances faint but visible Gaussians
    go too."""
    h, w = 32, 40
    p = scene(5, 60, h, w, extras=False)
    rng = np.random.default_rng(0)
    p = p.replace(colors=p.colors * jnp.asarray(10.0 ** rng.uniform(-5, 0, (p.num, 1)),
                                                jnp.float32))
    full = render_xla(p, h, w, clamp=False)
    removed = {}
    for max_mse in (1e-10, 1e-8, 1e-6, 1e-4):
        gone = PR.invisible(p, h, w, max_mse)
        kept = jax.tree_util.tree_map(lambda a: a[~gone], p)
        mse = float(jnp.mean(jnp.square(render_xla(kept, h, w, clamp=False) - full)))
        assert mse <= max_mse
        removed[max_mse] = int(gone.sum())
    counts = list(removed.values())
    assert counts == sorted(counts) and counts[0] < counts[-1] < p.num
    assert not PR.invisible(p, h, w, 0.0).any()
    with pytest.raises(ValueError, match="max_mse=-1"):
        PR.invisible(p, h, w, -1)


def test_invisible_gaussians_leave_the_file_and_the_render_is_unchanged(photo_with_dead):
    img, live, p = photo_with_dead
    h, w = img.shape[:2]
    gone = PR.invisible(p, h, w)
    assert gone[300:].all() and gone[:300].sum() < 10  # the collapsed ones, few others
    pruned, absent = PR.prune(p, h, w)
    assert absent == int(gone.sum()) and np.all(np.asarray(pruned.colors)[gone] == 0)
    np.testing.assert_array_equal(np.asarray(pruned.means), np.asarray(p.means))
    np.testing.assert_allclose(render(pruned, h, w, backend="xla"),
                               render(p, h, w, backend="xla"), atol=1e-6)
    spec = codec.choose_spec(pruned, h, w)
    data = codec.encode(pruned, h, w, spec=spec)
    assert codec.read_info(data).num_gaussians == p.num - absent
    decoded = codec.decode(data)[0]
    g = codec.grid(spec)
    np.testing.assert_allclose(render(decoded, h, w, backend="xla"),
                               render(codec.fake_quantize(pruned, g, h, w), h, w, backend="xla"),
                               atol=1e-5)
    # The dead scales do not widen the scale range: the same as the live set's.
    spec_live = codec.choose_spec(jax.tree_util.tree_map(lambda a: a[~gone], p), h, w)
    assert (spec.scale_lo, spec.scale_levels) == (spec_live.scale_lo, spec_live.scale_levels)


def test_pruning_spends_the_bytes_on_the_rest(photo_with_dead):
    """At the same byte budget, the file of the pruned set renders closer to the set's own
    render than the file of the set as it is, and as close as the file of the live Gaussians
    alone."""
    img, live, p = photo_with_dead
    h, w = img.shape[:2]
    budget = byte_budget(h, w, 10)
    reference = render(live, h, w, backend="xla")

    def decoded_psnr(params):
        q = BudgetQuantizer(h, w, budget, backend="xla")
        spec, _ = q.finish(params, q.plan(params)[0])
        data = codec.encode(params, h, w, spec=spec)
        assert len(data) <= budget
        return metrics.psnr(render(codec.decode(data)[0], h, w, backend="xla"), reference)

    as_is, pruned = decoded_psnr(p), decoded_psnr(PR.prune(p, h, w)[0])
    assert pruned > as_is + 0.5
    assert pruned == pytest.approx(decoded_psnr(live), abs=0.05)


def test_blended_sets_keep_black_gaussians_and_every_set_drops_transparent_ones():
    h, w = 16, 16
    p = P.GaussianParams.create(means=[[0.0, 0.0], [0.2, 0.1], [-0.3, 0.2]],
                                scales=[[2.0, 3.0]] * 3,
                                colors=[[0.0, 0.0, 0.0], [0.5, 0.2, 0.1], [0.3, 0.3, 0.3]],
                                opacity=[[0.9], [0.0], [0.6]], blend=True)
    spec = codec.choose_spec(p, h, w)
    codes = codec.quantize(p, codec.grid(spec), h, w)
    np.testing.assert_array_equal(dropped(codes, spec, blend=True), [False, True, False])
    np.testing.assert_array_equal(dropped(codes, spec, blend=False), [True, True, False])
    data = codec.encode(p, h, w, spec=spec)
    q = codec.decode(data)[0]
    assert q.num == 2 and q.blend  # the black occluder stays, in front of the grey one
    np.testing.assert_allclose(render(q, h, w, backend="xla"),
                               render(codec.fake_quantize(p, codec.grid(spec), h, w), h, w,
                                      backend="xla"), atol=1e-6)
    assert PR.prune(p, h, w, 1.0)[0] is p  # blended sets are not pruned


def test_a_set_that_adds_nothing_keeps_one_gaussian():
    h, w = 8, 8
    p = P.GaussianParams.create(means=[[0.0, 0.0], [0.5, 0.5]], scales=[[1.0, 1.0]] * 2,
                                colors=np.zeros((2, 3)))
    data = codec.encode(p, h, w)
    q = codec.decode(data)[0]
    assert q.num == 1 and float(jnp.abs(render(q, h, w, backend="xla")).max()) == 0.0


def test_fit_prunes_at_the_phase_start_and_keeps_them_out(photo_with_dead):
    """Training prunes when its quantization-aware phase starts, keeps the pruned Gaussians
    frozen with colour 0 (the faint ones have gradients: unfrozen, Adam would move them), and
    the file leaves them out; its render is still the trained one. prune_mse=0 keeps them
    all."""
    img, _, p0 = photo_with_dead
    h, w = img.shape[:2]
    budget = byte_budget(h, w, 8)
    # The phase is the whole run: pruned at step 0, while the faint ones are still faint.
    cfg = config_for_method("smartsplat", steps=20, qat_steps=20, chunk_steps=10,
                            eval_every=0, checkpoint_every=0, backend="xla")
    params, hist = fit(img, p0, cfg, progress=False,
                       quantizer=BudgetQuantizer(h, w, budget, backend="xla"))
    assert hist["pruned"] >= 105
    gone = np.all(np.asarray(params.colors) == 0, axis=-1)
    assert gone[300:].all() and int(gone.sum()) == hist["pruned"]
    from smartsplat_jax.pipeline import encode_trained

    data, info = encode_trained(params, hist, h, w, budget)
    assert info["file_gaussians"] == p0.num - hist["pruned"] and info["fits_budget"]
    np.testing.assert_allclose(render(codec.decode(data)[0], h, w, backend="xla"),
                               render(params, h, w, backend="xla"), atol=1e-5)
    keep_all = dataclasses.replace(cfg, prune_mse=0.0)
    params, hist = fit(img, p0, keep_all, progress=False,
                       quantizer=BudgetQuantizer(h, w, budget, backend="xla"))
    assert hist["pruned"] == 0
    data, info = encode_trained(params, hist, h, w, budget)
    assert info["file_gaussians"] == p0.num
    with pytest.raises(ValueError, match="prune_mse=-0.5"):
        config_for_method("smartsplat", prune_mse=-0.5)
