"""smartsplat_jax.init: each stage of SPEC §4 against hand values or brute-force oracles."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from smartsplat_jax import params as P
from smartsplat_jax.init import colors, features, grid, knn, smart_init, random_init, tiles
from smartsplat_jax.init import uniform, variational

# ---- tiles (Eq. 1-7, 13) ------------------------------------------------------------------


@pytest.mark.parametrize("h,w,rows,cols,th,tw", [
    (500, 700, [0], [0], 500, 700),                 # both sides < T: one centred tile
    (2048, 1024, [0, 1024], [0], 1024, 1024),       # exact multiples of T
    (1365, 2048, [0, 341], [0, 1024], 1024, 1024),  # overlap: stride (1365-1024)/1
    (3000, 1025, [0, 988, 1976], [0, 1], 1024, 1024),
    (2500, 17, [0, 738, 1476], [0], 1024, 17),     # odd sizes, a 17-pixel-wide image
    (1, 1, [0], [0], 1, 1),
])
def test_tile_layout_hand_computed(h, w, rows, cols, th, tw):
    lay = tiles.tile_layout(h, w)
    assert (lay.n_h, lay.n_w) == (len(rows), len(cols))
    assert lay.origins.tolist() == [[a, b] for a in rows for b in cols]
    assert (lay.tile_h, lay.tile_w) == (th, tw)


def test_tile_layout_16k():
    lay = tiles.tile_layout(16384, 16384)
    assert (lay.n_h, lay.n_w) == (16, 16)
    assert sorted(set(lay.origins[:, 0].tolist())) == [1024 * i for i in range(16)]
    # Every pixel is covered by some tile.
    lay = tiles.tile_layout(5000, 3333)
    cover = np.zeros((5000, 3333), bool)
    for ph, pw in lay.origins:
        cover[ph:ph + lay.tile_h, pw:pw + lay.tile_w] = True
    assert cover.all()


def test_allocate_eq13():
    np.testing.assert_array_equal(tiles.allocate(10, 4), [3, 3, 2, 2])
    np.testing.assert_array_equal(tiles.allocate(8, 4), [2, 2, 2, 2])
    np.testing.assert_array_equal(tiles.allocate(3, 5), [1, 1, 1, 0, 0])
    for total, t in [(0, 3), (12345, 256), (7, 1)]:
        a = tiles.allocate(total, t)
        assert a.sum() == total and a.max() - a.min() <= 1 and np.all(np.diff(a) <= 0)


# ---- features (Eq. 8-10) --------------------------------------------------------------------


def test_features_against_scipy_edge_replicated():
    rng = np.random.default_rng(0)
    t = rng.random((23, 31, 3)).astype(np.float32)
    gx = np.stack([ndimage.sobel(t[..., c].astype(np.float64), axis=1, mode="nearest")
                   for c in range(3)], -1)
    gy = np.stack([ndimage.sobel(t[..., c].astype(np.float64), axis=0, mode="nearest")
                   for c in range(3)], -1)
    m_ref = np.sqrt(gx**2 + gy**2).mean(-1)
    np.testing.assert_allclose(features.gradient_magnitude(jnp.asarray(t)), m_ref, rtol=1e-5, atol=1e-5)
    mean = ndimage.uniform_filter(t.astype(np.float64), size=(5, 5, 1), mode="nearest")
    sq = ndimage.uniform_filter(t.astype(np.float64) ** 2, size=(5, 5, 1), mode="nearest")
    v_ref = (sq - mean**2).mean(-1)
    np.testing.assert_allclose(features.local_variance(jnp.asarray(t)), v_ref, atol=1e-6)
    w = np.asarray(features.weights(jnp.asarray(t)))
    w_ref = 0.9 * m_ref / (m_ref.max() + 1e-8) + 0.1 * v_ref / (v_ref.max() + 1e-8)
    np.testing.assert_allclose(w, np.maximum(w_ref, 1e-8), atol=1e-5)


def test_constant_tile_has_floor_weights_and_no_border_artifacts():
    w = np.asarray(features.weights(jnp.full((16, 16, 3), 0.7)))
    np.testing.assert_array_equal(w, np.full((16, 16), 1e-8, np.float32))


# ---- variational sampling (Eq. 11-17) -------------------------------------------------------


def test_draws_are_distinct_and_follow_weights():
    # Four bands of 100 pixels with weights 1:2:3:4. With k = 1 draw, P(band) = w / sum.
    w = jnp.asarray(np.repeat([1.0, 2.0, 3.0, 4.0], 100))
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    first = jax.vmap(lambda k: variational.draw_without_replacement(k, w, 1)[0])(keys)
    freq = np.bincount(np.asarray(first) // 100, minlength=4) / 20000
    expect = np.array([0.1, 0.2, 0.3, 0.4])
    chi2 = 20000 * np.sum((freq - expect) ** 2 / expect)
    assert chi2 < 16.3  # p = 0.001 with 3 degrees of freedom
    many = jax.vmap(lambda k: variational.draw_without_replacement(k, w, 50))(keys[:200])
    assert all(len(set(row.tolist())) == 50 for row in np.asarray(many))
    # Zero-ish weights are (almost) never drawn.
    w2 = jnp.asarray(np.r_[np.full(10, 1e-8), np.ones(10)])
    d = jax.vmap(lambda k: variational.draw_without_replacement(k, w2, 5))(keys[:500])
    assert np.asarray(d).min() >= 10


def test_samples_lie_in_their_tile_and_are_distinct():
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.random((70, 90, 3)), jnp.float32)
    lay = tiles.tile_layout(70, 90, tile=32)
    counts = tiles.allocate(200, lay.num_tiles)
    xy, w = variational.sample_variational(jax.random.PRNGKey(3), img, lay, counts,
                                           batch_pixels=32 * 32 * 3)
    assert xy.shape == (200, 2) and w.shape == (200,)
    start = 0
    for t, n in enumerate(counts):
        part = xy[start:start + n]
        ph, pw = lay.origins[t]
        assert np.all((part[:, 0] >= pw) & (part[:, 0] < pw + lay.tile_w))
        assert np.all((part[:, 1] >= ph) & (part[:, 1] < ph + lay.tile_h))
        assert len({tuple(p) for p in part.tolist()}) == n
        assert np.all(part == np.round(part))  # integer pixel positions
        start += n
    # The weight returned is the tile's weight at the pixel.
    wmap = np.asarray(features.weights(img[lay.origins[0][0]:lay.origins[0][0] + 32,
                                           lay.origins[0][1]:lay.origins[0][1] + 32]))
    local = xy[:counts[0]].astype(int) - lay.origins[0][::-1]
    np.testing.assert_allclose(w[:counts[0]], wmap[local[:, 1], local[:, 0]], rtol=1e-6)
    # Batch size does not change the result.
    xy2, _ = variational.sample_variational(jax.random.PRNGKey(3), img, lay, counts,
                                            batch_pixels=1 << 22)
    np.testing.assert_array_equal(xy, xy2)



def test_sequential_and_vectorized_tiles_draw_the_same_samples():
    """One CPU maps the tiles one after another, several devices vectorize them: the same
    per-tile formulas, so the same pixels, and weights to float rounding."""
    rng = np.random.default_rng(8)
    img = jnp.asarray(rng.random((70, 90, 3)), jnp.float32)
    lay = tiles.tile_layout(70, 90, tile=32)
    keys = jax.random.split(jax.random.PRNGKey(5), lay.num_tiles)
    origins = jnp.asarray(lay.origins, jnp.int32)
    runs = [variational._sample_batch(keys, origins, img, tile_h=32, tile_w=32, k=40,
                                      lambda_m=0.9, sequential=s) for s in (False, True)]
    assert runs[0][0].shape == (lay.num_tiles, 40, 2)
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-6, atol=0)

def test_scales_eq15_17():
    assert variational.s_base(300, 300, 100) == pytest.approx(math.sqrt(900 / math.pi) / 3)
    s = variational.variational_scales(jnp.array([0.0, 1.0]), 2.0)
    np.testing.assert_allclose(s, [2.0, 2.0 * math.exp(-0.5)], rtol=1e-6)


# ---- exclusion sampling and KNN -------------------------------------------------------------


def _min_dist(a, b=None):
    b = a if b is None else b
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if b is a:
        d[np.arange(len(a)), np.arange(len(a))] = np.inf
    return d.min()


def test_exclusion_distances_hold():
    rng = np.random.default_rng(2)
    existing = np.concatenate([rng.uniform(0, 100, (150, 2)),
                               np.full((40, 2), 50.0) + rng.integers(0, 3, (40, 2))])  # a cluster
    xy, info = uniform.sample_uniform_excluding(jax.random.PRNGKey(0), existing, 120, 80, 100, 3.0)
    assert xy.shape == (120, 2)
    assert np.all((xy >= 0) & (xy < [100, 80]))
    r = info["radius_used"]
    assert r == 3.0 and info["shrink_steps"] == 0
    assert _min_dist(xy) >= r
    assert _min_dist(xy, existing) >= r


def test_exclusion_shrinks_rather_than_returning_fewer():
    # 200 points at mutual distance >= 10 cannot fit in a 40 x 40 image: the radius shrinks.
    xy, info = uniform.sample_uniform_excluding(jax.random.PRNGKey(1), np.zeros((0, 2)), 200,
                                                40, 40, 10.0, max_rounds=80)
    assert xy.shape == (200, 2)
    assert info["shrink_steps"] > 0 and info["radius_used"] < 10.0
    assert info["shrink_factor"] == pytest.approx(info["radius_used"] / 10.0)
    if info["unconstrained"] == 0:
        assert _min_dist(xy) >= info["radius_used"]


def _knn_brute(xy, q, k=3):
    d2 = ((xy[q][:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    d2.sort(axis=1)  # self (0) first
    kk = min(k, len(xy))
    return np.sqrt(d2[:, :kk].sum(1) / kk)


@pytest.mark.parametrize("seed,m,h,w", [(0, 500, 60, 80), (1, 50, 300, 20), (2, 3, 10, 10),
                                         (3, 2, 10, 10)])
def test_knn_matches_brute_force(seed, m, h, w):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (m, 2)) * [w, h]
    if m > 50:  # clusters and duplicates
        xy[:30] = xy[0] + rng.normal(0, 0.3, (30, 2))
        xy[30:35] = xy[30]
    q = np.arange(0, m, 2)
    got = knn.knn_scales(xy, q, h, w, chunk=64)
    np.testing.assert_allclose(got, _knn_brute(xy.astype(np.float32), q), rtol=1e-5, atol=1e-6)


def test_grid_overflow_is_reported():
    spec = grid.make_spec(10, 10, 5.0)
    pts = jnp.asarray(np.full((6, 2), 1.0), jnp.float32)
    sid, order = grid.build(spec.traced(), pts, jnp.ones(6, bool))
    assert grid.max_occupancy(spec, sid) == 6
    idx, ovf = grid.neighbour_indices(spec, sid, order, jnp.asarray([[2.0, 2.0], [9.0, 9.0]]),
                                      jnp.asarray(grid.ring_offsets(0)), occ=4)
    assert np.asarray(ovf).tolist() == [True, False]
    assert sorted(np.asarray(idx)[0].tolist()) == [0, 1, 2, 3]


# ---- colours ---------------------------------------------------------------------------------


def _median_brute(img, xy, s):
    out = []
    for (x, y), sc in zip(xy, s):
        taps = [(a, b) for b in range(-4, 5) for a in range(-4, 5) if a * a + b * b <= 20.25]
        px = np.array([x + a * sc / 4 for a, b in taps])
        py = np.array([y + b * sc / 4 for a, b in taps])
        wts = np.array([math.exp(-(a * a + b * b) / 32) for a, b in taps])
        px = np.clip(px, 0, img.shape[1] - 1)
        py = np.clip(py, 0, img.shape[0] - 1)
        col = []
        for c in range(3):
            v = ndimage.map_coordinates(img[..., c].astype(np.float64), [py, px], order=1)
            o = np.argsort(v, kind="stable")
            cum = np.cumsum(wts[o]) / wts.sum()
            col.append(v[o][np.searchsorted(cum, 0.5 - 1e-9)])
        out.append(col)
    return np.array(out)


@pytest.mark.parametrize("offset", [0.0, -0.5])  # -0.5: negative samples sort right too
def test_weighted_median_matches_brute_force(offset):
    rng = np.random.default_rng(4)
    img = rng.random((30, 40, 3)).astype(np.float32) + np.float32(offset)
    img[:6, :8] = 0.25  # flat: ties (the other samples straddle 0 when offset < 0)
    xy = np.c_[rng.uniform(-2, 42, 50), rng.uniform(-2, 32, 50)]
    xy[:5] = [[3.0, 2.0], [1.5, 2.5], [4.0, 4.0], [2.0, 1.0], [0.0, 0.0]]
    s = rng.uniform(0.2, 6.0, 50)
    s[:5] = [0.5, 1.0, 0.8, 0.3, 2.0]
    got = colors.weighted_median_colors(jnp.asarray(img), xy, s, chunk=16)
    np.testing.assert_allclose(got, _median_brute(img, xy, s), atol=1e-5)
    np.testing.assert_array_equal(got[:4], 0.25)


def test_smart_init_is_pinned():
    """The initialization of a fixed crop, key and N equals the stored one (written before
    the initialization was sped up); only float rounding may differ."""
    from smartsplat_jax import DEMO_IMAGE, load_image

    img = load_image(DEMO_IMAGE)[100:260, 200:440]
    p, info = smart_init(jax.random.PRNGKey(11), img, P.num_gaussians(160, 240, 20), tile=64)
    ref = np.load(Path(__file__).parent / "data" / "smart_init_demo_160x240_cr20_key11.npz")
    assert info["num_gaussians"] == 822 and info["num_variational"] == 575
    for name in ref.files:
        np.testing.assert_allclose(getattr(p, name), ref[name], rtol=0, atol=3e-7, err_msg=name)


# ---- the whole initialization ----------------------------------------------------------------


@pytest.mark.parametrize("h,w,cr", [
    pytest.param(40, 60, 20, marks=pytest.mark.slow),  # ~10 s each; the edge cases stay fast
    pytest.param(40, 60, 3 / 7, marks=pytest.mark.slow),
    (40, 60, 3 * 2400 / 7 - 1), (1, 200, 2), (200, 1, 5), (33, 47, 1), (64, 64, 100)])
def test_exact_count_for_many_sizes(h, w, cr):
    rng = np.random.default_rng(h * w)
    img = rng.random((h, w, 3)).astype(np.float32)
    n = P.num_gaussians(h, w, cr)
    p, info = smart_init(jax.random.PRNGKey(0), img, n, tile=32)
    assert p.means.shape == (n, 2) and p.colors.shape == (n, 3)
    assert info["num_variational"] + info["num_uniform"] == n
    assert info["num_variational"] == math.floor(0.7 * n)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(p))
    assert bool(jnp.all(p.scales > 0))
    np.testing.assert_array_equal(p.rotation, 0.0)
    np.testing.assert_array_equal(p.opacity, 1.0)
    px = P.normalized_to_pixel(p.means, h, w)
    assert bool(jnp.all((px >= 0) & (px < jnp.array([w, h]))))


@pytest.mark.parametrize("kind", ["constant", "noise", "one_pixel_wide"])
def test_degenerate_images(kind):
    rng = np.random.default_rng(0)
    img = {"constant": np.full((48, 64, 3), 0.25, np.float32),
           "noise": rng.random((48, 64, 3)).astype(np.float32),
           "one_pixel_wide": rng.random((90, 1, 3)).astype(np.float32)}[kind]
    h, w = img.shape[:2]
    n = P.num_gaussians(h, w, 10)
    p, info = smart_init(jax.random.PRNGKey(2), img, n)
    assert p.means.shape[0] == n
    if kind == "constant":
        np.testing.assert_allclose(p.colors, 0.25, atol=1e-6)


def test_deterministic_and_key_dependent():
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    a, _ = smart_init(jax.random.PRNGKey(7), img, 100)
    b, _ = smart_init(jax.random.PRNGKey(7), img, 100)
    c, _ = smart_init(jax.random.PRNGKey(8), img, 100)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.means, c.means)


def test_smart_init_runs_with_float64_enabled():
    # Researchers check gradients in float64; the tile slices once mixed int32 origins with
    # an int64 literal there ("lax.concatenate requires arguments to have the same dtypes").
    from helpers import enable_x64

    img = np.random.default_rng(1).random((40, 50, 3)).astype(np.float32)
    with enable_x64():
        p, _ = smart_init(jax.random.PRNGKey(7), img, 100)
        assert p.means.shape == (100, 2)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(p))
        assert float(jnp.max(jnp.abs(p.means))) <= 1.0


def test_bad_inputs():
    img = np.zeros((10, 10, 3), np.float32)
    with pytest.raises(ValueError, match=r"num_gaussians=101 must be in \[1, H\*W\]"):
        smart_init(jax.random.PRNGKey(0), img, 101)
    with pytest.raises(ValueError, match="num_gaussians=0"):
        random_init(jax.random.PRNGKey(0), img, 0)
    with pytest.raises(ValueError, match="shape"):
        smart_init(jax.random.PRNGKey(0), np.zeros((10, 10)), 5)
    with pytest.raises(ValueError, match="lambda_g"):
        smart_init(jax.random.PRNGKey(0), img, 5, lambda_g=1.5)


def test_smart_beats_random_on_a_photo(kodak_dir):
    from smartsplat_jax import load_image, metrics
    from smartsplat_jax.render import render

    img = load_image(kodak_dir / "kodim23.png")[::2, ::2]
    h, w = img.shape[:2]
    n = P.num_gaussians(h, w, 20)
    ps, info = smart_init(jax.random.PRNGKey(0), img, n)
    pr, _ = random_init(jax.random.PRNGKey(0), img, n)
    assert metrics.psnr(render(ps, h, w), img) > metrics.psnr(render(pr, h, w), img) + 1.0


@pytest.mark.parametrize("devices", [["cpu"], [], "cpu", 3])
def test_smart_init_refuses_devices_that_are_not_jax_devices(devices):
    img = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="devices=.* must be a"):
        smart_init(jax.random.PRNGKey(0), img, 10, devices=devices)


def test_smart_init_refuses_a_device_named_twice():
    img = np.zeros((16, 16, 3), np.float32)
    dev = jax.devices()[0]
    with pytest.raises(ValueError, match="names a device twice"):
        smart_init(jax.random.PRNGKey(0), img, 10, devices=[dev, dev])
