"""smartsplat_jax.codec: the quantizer, the entropy coder, the .ssplat format, rate control,
damaged and crafted files, fuzzing."""

import dataclasses
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartsplat_jax import DEMO_IMAGE, codec, load_image, metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec import entropy
from smartsplat_jax.codec import format as F
from smartsplat_jax.codec.rate import (DEFAULT_ALLOCATION, Allocation, BudgetQuantizer,
                                       gaussians_for_budget,
                                       allocate, byte_budget, fit_budget, spec_for_budget)
from smartsplat_jax.init import smart_init
from smartsplat_jax.render import output_size, render

from helpers import header_spans, recrc

Q = sys.modules["smartsplat_jax.codec.quantize"]


def scene(seed, n, h, w, *, opacity=False):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(-3, w + 3, n), rng.uniform(-3, h + 3, n)], 1)
    scales = rng.uniform(0.3, 6.0, (n, 2)) * rng.choice([-1, 1], (n, 2))
    scales[0] = [0.0, 2.0]  # a zero axis: coded at the smallest scale
    scales[1] = [1e-9, 3.0]
    scales[2] = [2.5, 2.5]  # isotropic: no angle
    return P.GaussianParams.create(
        means=P.pixel_to_normalized(jnp.asarray(xy), h, w), scales=scales,
        colors=rng.uniform(-0.4, 1.4, (n, 3)), rotation=rng.normal(0, 2, (n, 1)),
        opacity=rng.uniform(0.2, 1.0, (n, 1)) if opacity else None)


def rows(params):
    """[N, 9+] rows of (centre, covariance, colour, opacity), sorted: one row per Gaussian
    whatever its representation (axis order, angle branch) and the file's order."""
    cov = np.asarray(P.covariance(params)).reshape(-1, 4)[:, [0, 1, 3]]
    a = np.concatenate([np.asarray(params.means), cov, np.asarray(params.colors),
                        np.asarray(params.opacity)], 1).astype(np.float64)
    return a[np.lexsort(np.round(a, 4).T[::-1])]


H, W = 40, 56


@pytest.fixture(scope="module")
def small():
    p = scene(0, 150, H, W)
    return p, codec.encode(p, H, W)


@pytest.fixture(scope="module")
def photo():
    """A 96 x 128 crop of the demo photo and a feature-smart init of it at CR 10 (N = 526)."""
    img = load_image(DEMO_IMAGE)[200:296, 300:428]
    h, w = img.shape[:2]
    p, _ = smart_init(jax.random.PRNGKey(0), img, P.num_gaussians(h, w, 10))
    return img, p


# ------------------------------------------------------------------ Morton codes and steps

def test_morton_hand_values_and_round_trip():
    x = np.array([0, 1, 0, 1, 2, 3, 2**31 - 1])
    y = np.array([0, 0, 1, 1, 0, 3, 2**31 - 1])
    m = codec.morton_encode(x, y)
    np.testing.assert_array_equal(m[:6], [0, 1, 2, 3, 4, 15])
    assert int(m[6]) == 2**62 - 1
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 2**31, 1000), rng.integers(0, 2**31, 1000)
    xx, yy = codec.morton_decode(codec.morton_encode(x, y))
    np.testing.assert_array_equal(xx, x)
    np.testing.assert_array_equal(yy, y)


def test_steps_are_exact_powers_of_the_eighth_root_of_two():
    assert Q.step_value(0) == 1.0 and Q.step_value(-16) == 0.25 and Q.step_value(8) == 2.0
    for e in range(-96, 24):
        assert Q.step_value(e) == pytest.approx(2.0 ** (e / 8), rel=1e-7)
        assert Q.step_value(e + 8) == 2.0 * Q.step_value(e)  # exact in float32


def test_spec_rejects_bad_fields():
    with pytest.raises(ValueError, match="pos_exp=30"):
        codec.QuantSpec(pos_exp=30).check()
    with pytest.raises(ValueError, match="color_levels"):
        codec.QuantSpec(color_levels=(1, 0, 1)).check()
    with pytest.raises(ValueError, match="scale_levels=70000"):
        codec.QuantSpec(scale_levels=70000).check()


# ------------------------------------------------------------------ the quantizer

def test_quantize_hand_values():
    h, w = 10, 20
    # Steps: 1/4 px; 1/2 octave with code 0 at log2 s = -1 (levels 0..8: 0.5 .. 8 px);
    # colour 1/2 with codes from (0, -1, -1.5).
    spec = codec.QuantSpec(pos_exp=-16, scale_exp=-8, scale_lo=-2, scale_levels=9,
                           color_exp=-8, color_lo=(0, -2, -3), color_levels=(6, 5, 7))
    g = codec.grid(spec)
    xy = jnp.asarray([[3.1, 4.0], [-50.0, 100.0]])  # px; the second is clamped to the box
    theta = jnp.asarray([[np.pi / 2 + 0.3], [2.0]])
    rgb = jnp.asarray([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    p = P.GaussianParams.create(means=P.pixel_to_normalized(xy, h, w),
                                scales=[[2.0, -4.0], [0.01, 1e6]],
                                rotation=P.angle_to_raw(theta), colors=rgb)
    c = codec.quantize(p, g, h, w)
    np.testing.assert_array_equal(c.position, [[12, 16], [-80, 80]])  # round(3.1 * 4); box
    # log2 (1, 2) -> codes (4, 6): y is the major axis, anisotropy 2. The second: (0, 8)
    # after clamping both ends.
    np.testing.assert_array_equal(c.scale, [6, 8])
    np.testing.assert_array_equal(c.aniso, [2, 8])
    # L(2): r = 2 -> F = pi * 1.5 / (2 ln 2 * 0.5) = 6.80 -> 8 levels (even, rounded up);
    # L(8): r = 16 -> F = pi * 15.9375 / ln 2 = 72.2 -> 74.
    table = Q.angle_levels_table(spec)
    assert (table[0], table[2], table[8]) == (1, 8, 74)
    # Swapped axes turn the angle by pi/2: (pi + 0.3 - pi/2) / (pi/8) = 4.76 -> 5;
    # (2 + pi/2 - pi/2) / (pi / 74) = 47.1 -> 47.
    np.testing.assert_array_equal(c.angle, [5, 47])
    # Grey: luma 0.866 / 0.5 = 1.73 -> 2, chroma 0 -> the offsets 2 and 3. Red (1, 0, 0):
    # luma 0.577 -> 1.15 -> 1; 0.707 -> 1.41 + 2 -> 3; 0.408 -> 0.82 + 3 -> 4.
    np.testing.assert_array_equal(c.color, [[2, 2, 3], [1, 3, 4]])
    q = codec.dequantize(c, g, h, w)
    np.testing.assert_allclose(P.normalized_to_pixel(q.means, h, w), [[3.0, 4.0], [-20.0, 20.0]],
                               atol=1e-5)
    np.testing.assert_allclose(q.scales, [[4.0, 2.0], [8.0, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(P.rotation_angle(q.rotation)[:, 0],
                               [np.pi / 2 + 5 * np.pi / 8, np.pi / 2 + 47 * np.pi / 74], rtol=1e-6)
    np.testing.assert_allclose(q.colors[0], [1 / np.sqrt(3)] * 3, atol=1e-6)


def test_decoded_values_are_one_rounding_of_an_integer_times_the_step():
    """A code k decodes to float32(lo + k) * step exactly (one rounding of an exact integer,
    as the module docstring defines it, whatever the compiler fuses), so a zero colour, a
    pruned Gaussian's, decodes to exactly 0; in dequantize, its jitted copy and fake_quantize
    alike. (lo * step + k * step rounds twice, and as a fused multiply-add gives about 1e-9
    instead of 0.)"""
    spec = codec.QuantSpec(pos_exp=-16, scale_exp=-11, scale_lo=-61, scale_levels=200,
                           color_exp=-37, color_lo=(-40, -77, -123), color_levels=(300, 200, 250),
                           opacity_exp=-61, opacity_lo=-3, opacity_levels=300)
    g = codec.grid(spec)
    n = 500
    rng = np.random.default_rng(5)
    codes = codec.Codes(
        position=jnp.zeros((n, 2), jnp.int32),
        scale=jnp.asarray(rng.integers(30, 200, n), jnp.int32),
        aniso=jnp.asarray(rng.integers(0, 30, n), jnp.int32), angle=jnp.zeros(n, jnp.int32),
        color=jnp.asarray(np.stack([rng.integers(0, k, n) for k in spec.color_levels], -1)
                          .astype(np.int32)).at[0].set(jnp.asarray([40, 77, 123])),
        opacity=jnp.asarray(rng.integers(0, 300, n), jnp.int32).at[0].set(3))
    f32 = np.float32
    step = {k: f32(Q.step_value(getattr(spec, k + "_exp"))) for k in ("scale", "color",
                                                                      "opacity")}
    major = (spec.scale_lo + np.asarray(codes.scale)).astype(f32) * step["scale"]
    luma_chroma = ((np.asarray(spec.color_lo) + np.asarray(codes.color)).astype(f32)
                   * step["color"])
    opacity = (spec.opacity_lo + np.asarray(codes.opacity)).astype(f32) * step["opacity"]
    for dequantize in (codec.dequantize, jax.jit(codec.dequantize, static_argnums=(2, 3))):
        q = dequantize(codes, g, 8, 8)
        np.testing.assert_allclose(np.log2(np.asarray(q.scales[:, 0])), major, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(q.opacity[:, 0]), opacity)
        np.testing.assert_allclose(Q.canonical_colors(q.colors), luma_chroma, atol=1e-6)
        assert np.all(np.asarray(q.colors[0]) == 0) and float(q.opacity[0, 0]) == 0.0
    zero = scene(0, 4, 8, 8, opacity=True)
    zero = zero.replace(colors=jnp.zeros_like(zero.colors), opacity=jnp.zeros_like(zero.opacity))
    fq = jax.jit(codec.fake_quantize, static_argnums=(2, 3))(zero, g, 8, 8)
    assert np.all(np.asarray(fq.colors) == 0) and np.all(np.asarray(fq.opacity) == 0)


def test_angle_levels_table_properties():
    spec = codec.QuantSpec(scale_exp=-32, scale_levels=10)
    t = Q.angle_levels_table(spec)
    assert t[0] == 1 and np.all(t[1:] % 2 == 0) and np.all(t[1:] >= 2)
    assert np.all(np.diff(t) >= 0) and t[-1] == Q.MAX_ANGLE_LEVELS
    finer = Q.angle_levels_table(dataclasses.replace(spec, angle_exp=8))
    below_cap = t < Q.MAX_ANGLE_LEVELS // 2
    below_cap[0] = False
    assert below_cap.sum() > 100
    # twice the precision, up to the rounding to even counts
    assert np.all(finer[below_cap] >= 2 * t[below_cap] - 2)


def test_same_gaussian_in_any_representation_gets_the_same_codes():
    """theta vs theta + pi, and (s_x, s_y, theta) vs (s_y, s_x, theta + pi/2), describe one
    Gaussian: they get one set of codes, and the decoded covariance is close to it."""
    rng = np.random.default_rng(3)
    n = 64
    theta = rng.uniform(0.01, np.pi - 0.01, (n, 1))
    s = rng.uniform(1, 5, (n, 2))
    base = dict(means=rng.uniform(-0.9, 0.9, (n, 2)), colors=rng.uniform(0, 1, (n, 3)))
    reps = [P.GaussianParams.create(scales=s, rotation=P.angle_to_raw(jnp.asarray(theta)), **base),
            P.GaussianParams.create(scales=-s, rotation=P.angle_to_raw(jnp.asarray(theta + np.pi)),
                                    **base),
            P.GaussianParams.create(scales=s[:, ::-1],
                                    rotation=P.angle_to_raw(jnp.asarray(theta + np.pi / 2)), **base)]
    spec = codec.choose_spec(reps[0], 64, 64, scale_exp=-56)
    g = codec.grid(spec)
    codes = [codec.quantize(r, g, 64, 64) for r in reps]
    for c in codes[1:]:
        for a, b in zip(codes[0], c):
            np.testing.assert_array_equal(a, b)
    q = codec.dequantize(codes[0], g, 64, 64)
    # The decoded covariance is within the grid's precision: in the metric of Sigma, the
    # change is about a log2-scale step (2 ln 2 * step) at most (the angle grid matches it).
    sig = np.asarray(P.covariance(reps[0]), np.float64)
    root = np.linalg.cholesky(np.linalg.inv(sig))
    rel = np.einsum("nji,njk,nkl->nil", root, np.asarray(P.covariance(q)) - sig, root)
    err = np.abs(np.linalg.eigvalsh(rel)).max(1)
    assert err.max() < 2.5 * 2 * np.log(2) * spec.scale_step, err.max()


@pytest.mark.parametrize("opacity", [False, True])
def test_fake_quantize_is_the_decoded_gaussian_with_identity_gradient(opacity):
    p = scene(5, 200, H, W, opacity=opacity)
    g = codec.grid(codec.choose_spec(p, H, W))
    fq = codec.fake_quantize(p, g, H, W)
    dq = codec.dequantize(codec.quantize(p, g, H, W), g, H, W)
    np.testing.assert_array_equal(fq.means, dq.means)
    np.testing.assert_array_equal(fq.colors, dq.colors)
    np.testing.assert_array_equal(fq.opacity, dq.opacity)
    np.testing.assert_allclose(P.covariance(fq), P.covariance(dq), rtol=2e-5, atol=1e-5)
    np.testing.assert_array_equal(np.sign(fq.scales), np.where(p.scales < 0, -1, 1))  # raw signs
    np.testing.assert_allclose(render(fq, H, W), render(dq, H, W), atol=5e-6)  # same Gaussians, axes ordered differently
    weights = jax.tree_util.tree_map(lambda x: jnp.arange(x.size, dtype=x.dtype).reshape(x.shape), p)
    grad = jax.grad(lambda q: sum(jnp.sum(a * b) for a, b in zip(
        jax.tree_util.tree_leaves(codec.fake_quantize(q, g, H, W)),
        jax.tree_util.tree_leaves(weights))))(p)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(weights)):
        np.testing.assert_array_equal(a, b)


def test_project_keeps_in_range_values_and_clamps_the_rest():
    p = scene(6, 100, H, W)
    spec = codec.choose_spec(p, H, W)
    g = codec.grid(spec)
    inside = p.replace(means=jnp.clip(p.means, -1.0, 1.0), scales=p.scales.at[:2].set(1.0))
    g = codec.grid(codec.choose_spec(inside, H, W))
    same = codec.project(inside, g, H, W)
    for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(inside)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(same.colors, p.colors)
    np.testing.assert_array_equal(same.rotation, p.rotation)
    far = p.replace(colors=p.colors.at[0].set(jnp.asarray([9.0, -9.0, 0.0])),
                    scales=p.scales.at[1].set(jnp.asarray([1e5, -1e-8])),
                    means=p.means.at[2].set(jnp.asarray([40.0, -40.0])))
    moved = codec.project(far, g, H, W)
    c = Q.canonical_colors(moved.colors[:1])[0]
    lo = (np.asarray(g.color_lo) - 0.5) * float(g.color_step)  # integer offsets (Grid)
    hi = lo + (np.asarray(g.color_top) + 1) * float(g.color_step)
    assert np.all(c >= lo - 1e-5) and np.all(c <= hi + 1e-5)
    s = np.abs(np.asarray(moved.scales[1]))
    step = float(g.scale_step)
    assert 2.0 ** ((int(g.scale_lo) - 0.5) * step) <= s.min() and s.max() <= 2.0 ** (
        (int(g.scale_lo) + int(g.scale_top) + 0.5) * step)
    assert float(moved.scales[1, 1]) < 0  # the raw sign is kept
    np.testing.assert_allclose(P.normalized_to_pixel(moved.means[2], H, W), [2 * W, -H])
    # Projected params quantize to what the clamping quantizer gave already.
    for a, b in zip(codec.quantize(far, g, H, W), codec.quantize(moved, g, H, W)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ entropy coding

def test_entropy_coder_round_trip_and_cost():
    rng = np.random.default_rng(0)
    n, k = 20000, 600
    s = np.clip(np.round(rng.normal(300, 40, n)), 0, k - 1).astype(np.int64)
    sizes = rng.integers(1, 50, n)
    u = rng.integers(0, 50, n) % sizes
    bits = rng.integers(0, 40, n)
    raw = rng.integers(0, 2**40, n).astype(np.uint64) & ((np.uint64(1) << bits.astype(np.uint64))
                                                         - np.uint64(1))
    enc = entropy.Encoder()
    enc.adaptive(s, k)
    enc.uniform(u, sizes)
    enc.raw(raw, bits)
    enc.adaptive(np.zeros(10, np.int64), 1)  # a one-symbol alphabet costs nothing
    data = enc.finish()
    dec = entropy.Decoder(data)
    np.testing.assert_array_equal(dec.adaptive(n, k), s)
    np.testing.assert_array_equal(dec.uniform(sizes), u)
    np.testing.assert_array_equal(dec.raw(bits), raw)
    np.testing.assert_array_equal(dec.adaptive(10, 1), 0)
    # The adaptive model costs little more than the sample's own entropy (a lower bound for
    # any static model), and uniform / raw codes cost their log2 sizes.
    pk = np.bincount(s, minlength=k) / n
    h_bits = -np.sum(pk[pk > 0] * np.log2(pk[pk > 0])) * n
    expect = h_bits + np.log2(sizes).sum() + bits.sum()
    assert expect <= 8 * len(data) <= expect * 1.01 + 64
    assert entropy.adaptive_cost_bits(s, k) == pytest.approx(h_bits, rel=0.01)


def test_entropy_decoder_of_garbage_returns_bounded_symbols():
    rng = np.random.default_rng(1)
    dec = entropy.Decoder(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    s = dec.adaptive(5000, 37)
    assert s.min() >= 0 and s.max() < 37
    u = dec.uniform(np.full(100, 7))
    assert u.min() >= 0 and u.max() < 7


# ------------------------------------------------------------------ files

@pytest.mark.parametrize("opacity", [False, True])
def test_round_trip_equals_dequantized(opacity):
    p = scene(1, 300, H, W, opacity=opacity)
    spec = codec.choose_spec(p, H, W, pos_exp=-24, color_exp=-72)
    data = codec.encode(p, H, W, spec=spec)
    q, h, w = codec.decode(data)
    assert (h, w) == (H, W) and q.num == p.num
    g = codec.grid(spec)
    expected = codec.dequantize(codec.quantize(p, g, H, W), g, H, W)
    np.testing.assert_allclose(rows(q), rows(expected), rtol=1e-5, atol=5e-5)
    codes, info = codec.decode_codes(data)

    def table(c):
        t = np.concatenate([np.asarray(c.position), np.stack([c.scale, c.aniso, c.angle], 1),
                            np.asarray(c.color), np.asarray(c.opacity)[:, None]], 1)
        return t[np.lexsort(t.T[::-1])]

    np.testing.assert_array_equal(table(codes), table(codec.quantize(p, g, H, W)))
    assert info.spec == spec and info.num_gaussians == 300 and info.file_bytes == len(data)
    assert info.compression_ratio == pytest.approx(3 * H * W / len(data))
    # Decoding is deterministic and a second encoding of the decoded params is identical.
    assert codec.encode(q, H, W, spec=spec) == data


def test_decoded_render_equals_quantized_render(small):
    p, data = small
    q, h, w = codec.decode(data)
    g = codec.grid(codec.read_info(data).spec)
    # The same Gaussians summed in another order (Morton): equal up to float rounding.
    np.testing.assert_allclose(render(q, h, w), render(codec.fake_quantize(p, g, H, W), H, W),
                               atol=1e-5)
    assert float(jnp.abs(render(q, h, w) - render(p, H, W)).mean()) < 0.01


def test_a_stray_gaussian_costs_the_others_nothing(photo):
    """One far-off Gaussian (tiny, colour -16 or +16, as long training leaves some) must not
    coarsen everyone else's quantization: at the same byte budget the decoded PSNR stays
    within 0.3 dB of the same set without it."""
    img, p = photo
    h, w = img.shape[:2]
    budget = byte_budget(h, w, 10)

    def decoded_psnr(params):
        spec, q, size = spec_for_budget(params, h, w, budget)
        assert size <= budget
        return metrics.psnr(render(codec.decode(codec.encode(params, h, w, spec=spec))[0], h, w),
                            img)

    clean = decoded_psnr(p)
    for colour in (-16.0, 16.0):
        stray = P.GaussianParams.create(means=[[0.013, -0.021]], scales=[[2**-6, 2**-5]],
                                        colors=[[colour, colour, -colour]], rotation=[[0.7]])
        both = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), p, stray)
        assert decoded_psnr(both) > clean - 0.3


@pytest.mark.parametrize("cr", [20, 100, 500])
def test_rate_control_fills_the_budget(cr):
    """At CR 20, 100 and 500 on a 256 x 256 photo crop: the file is at most 3HW/CR bytes and
    uses at least 97 % of them."""
    img = load_image(DEMO_IMAGE)[100:356, 300:556]
    h, w = img.shape[:2]
    p, _ = smart_init(jax.random.PRNGKey(cr), img, P.num_gaussians(h, w, cr))
    budget = byte_budget(h, w, cr)
    spec, q, size = spec_for_budget(p, h, w, budget)  # the plan: 99 % of the budget
    assert 0.97 * budget <= size <= 0.99 * budget
    spec2, data, fits = fit_budget(p, h, w, budget, spec)
    assert fits and len(data) == size and spec2 == spec
    final, info = BudgetQuantizer(h, w, budget, backend="xla").finish(p, spec)
    data = codec.encode(p, h, w, spec=final)  # the colour step for the budget itself
    assert len(data) == info["final_bytes"] and size <= len(data) <= 3 * h * w / cr
    assert codec.decode(data)[0].num == p.num


def test_allocation_equalizes_slopes_on_a_photo(photo):
    """The measured allocation is a sensible one: the rounding loss at equal bytes is no
    worse than with the default allocation (and steps stay within their limits)."""
    img, p = photo
    h, w = img.shape[:2]
    a = allocate(p, h, w, backend="xla")
    for g in ("pos_exp", "scale_exp", "color_exp"):
        lo, hi = codec.QUANT_LIMITS[g]
        assert lo <= getattr(a, g) <= hi
    budget = byte_budget(h, w, 20)
    psnr = {}
    for name, alloc in (("default", DEFAULT_ALLOCATION), ("measured", a)):
        spec, _, _ = spec_for_budget(p, h, w, budget, alloc)
        psnr[name] = metrics.psnr(render(codec.decode(codec.encode(p, h, w, spec=spec))[0], h, w),
                                  img)
    assert psnr["measured"] > psnr["default"] - 0.1, psnr


def test_level_moves_one_step_at_a_time():
    a = Allocation(pos_exp=-20, scale_exp=-30, color_exp=-60)
    assert a.at(0) == {"color_exp": -60, "scale_exp": -30, "pos_exp": -20, "angle_exp": 0}
    assert a.at(1)["color_exp"] == -59 and a.at(1)["scale_exp"] == -30
    assert a.at(2)["scale_exp"] == -29 and a.at(3)["pos_exp"] == -19
    # Finer goes the other way round: position, scale, colour.
    assert a.at(-1) == {"color_exp": -60, "scale_exp": -30, "pos_exp": -21, "angle_exp": 0}
    assert a.at(-3) == {"color_exp": -61, "scale_exp": -31, "pos_exp": -21, "angle_exp": 0}


def test_encode_rejects_bad_input(small):
    p, _ = small
    with pytest.raises(ValueError, match="N=150"):
        codec.encode(p, 10, 10)
    with pytest.raises(ValueError, match="height"):
        codec.encode(p, 0, W)


# ------------------------------------------------------------------ damaged and crafted files

def _fields(data):
    """(offset, end) of the varint fields of a header, in order, and the payload offset."""
    info = codec.read_info(data)
    return header_spans(data, 16 + (3 if info.spec.opacity_levels else 0) + 3)


def _set_field(data, index, value, signed=False):
    fields = _fields(data)
    a, b = fields[index]
    new = (F._svarint if signed else F._uvarint)(value)
    body = data[:a] + new + data[b:-4]
    return recrc(body + b"\0\0\0\0")


def test_damaged_files_are_rejected_with_clear_errors(small):
    _, data = small
    cases = {
        b"": "empty input",
        b"PNG\x00" + data[4:]: "not a .ssplat file",
        b"SS": "truncated",
        data[:4] + bytes([4]) + data[5:]: "unsupported .ssplat version 4",
        data[:4] + bytes([1]) + data[5:]: "version 1 .ssplat file",
        data[:50]: "checksum",
        data[:-1]: "checksum",
        data[:len(data) // 2]: "checksum",
        data + b"\x00": "checksum",
    }
    for bad, message in cases.items():
        with pytest.raises(codec.CodecError, match=message):
            codec.decode(bad)
    for offset in (6, 14, 30, len(data) - 10, len(data) - 2):
        b = bytearray(data)
        b[offset] ^= 0x10
        with pytest.raises(codec.CodecError, match="checksum mismatch"):
            codec.decode(bytes(b))


@pytest.mark.parametrize("index,value,signed,message", [
    (0, 0, False, "height=0"),
    (1, F.MAX_SIDE + 1, False, "width=65537"),
    (2, 2**31, False, "N=2147483648"),
    (2, H * W + 1, False, "N=2241"),
    (3, 4, False, "flags=4"),
    (4, 99, True, "pos_exp=99"),
    (7, 0, False, "scale_levels=0"),
    (7, 1 << 20, False, "scale_levels"),
    (9, 5, True, "color_exp=5"),
    (13, 0, False, "color_levels"),
    (16, -2**40, True, "origin"),
    (18, 10**6, False, "payload"),
])
def test_crafted_headers_are_rejected(small, index, value, signed, message):
    _, data = small
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(_set_field(data, index, value, signed))


def test_absurd_header_is_rejected_before_any_large_allocation(small):
    """N = 2**25 on a 65536^2 image passes the limits, but the payload is far too short for it:
    the decoder must fail without allocating the gigabytes such an N would need."""
    _, data = small
    crafted = _set_field(_set_field(_set_field(data, 0, F.MAX_SIDE), 1, F.MAX_SIDE),
                         2, F.MAX_GAUSSIANS)
    tracemalloc.start()
    with pytest.raises(codec.CodecError, match="payload of at least"):
        codec.decode(crafted)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20, peak


def test_header_is_small():
    """Small images at high CR have budgets of a few hundred bytes: the header stays small."""
    p = scene(2, 50, H, W)
    spec = codec.choose_spec(p, H, W)
    assert codec.header_bytes(H, W, 50, spec, 300) <= 40


_BLENDED = {}


def _blended_file(p):
    """A version 3 file of `p` alpha-blended, with opacities in (0, 1) (built once)."""
    if "data" not in _BLENDED:
        q = p.replace(opacity=jnp.clip(p.opacity, 0.05, 0.95), blend=True)
        _BLENDED["data"] = codec.encode(q, H, W)
    return _BLENDED["data"]


def _check_decoded(result):
    params, h, w = result
    assert 1 <= h <= F.MAX_SIDE and 1 <= w <= F.MAX_SIDE
    for leaf in jax.tree_util.tree_leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf)))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_fuzz_decoder_never_crashes(small, data):
    """Random bytes, and mutations of a real file (additive, or blended with opacities and
    depth ranks) with its checksum repaired: decode either returns finite parameters or
    raises CodecError, and never anything else."""
    p, additive = small
    if data.draw(st.booleans()):
        good = additive
    else:
        good = _blended_file(p)
    kind = data.draw(st.sampled_from(["random", "mutate", "truncate", "header"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=400))
        if data.draw(st.booleans()):
            blob = recrc(F.MAGIC + bytes([F.VERSION]) + blob + b"\x00" * 4)
    elif kind == "mutate":
        b = bytearray(good)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 5))
            b[i] = data.draw(st.integers(0, 255))
        blob = recrc(bytes(b))
    elif kind == "truncate":
        blob = recrc(good[:data.draw(st.integers(0, len(good) - 4))] + b"\x00" * 4)
    else:
        b = bytearray(good)
        field = data.draw(st.integers(5, 30))
        b[field:field + 4] = data.draw(st.binary(min_size=4, max_size=4))
        blob = recrc(bytes(b))
    try:
        result = codec.decode(blob)
    except codec.CodecError:
        return
    _check_decoded(result)


# ------------------------------------------------------------------ output sizes

def test_output_size_hand_values():
    assert output_size(512, 768) == (512, 768)
    assert output_size(512, 768, scale=2) == (1024, 1536)
    assert output_size(512, 768, scale=0.001) == (1, 1)
    assert output_size(512, 768, out_width=100) == (67, 100)
    assert output_size(512, 768, out_height=100) == (100, 150)
    assert output_size(512, 768, out_width=10, out_height=20) == (20, 10)
    with pytest.raises(ValueError, match="either scale or width"):
        output_size(5, 5, scale=2.0, out_width=3)
    with pytest.raises(ValueError, match="width=0"):
        output_size(5, 5, out_width=0)
    with pytest.raises(ValueError, match="scale=-1"):
        output_size(5, 5, scale=-1)
    with pytest.raises(ValueError, match="exceeds"):
        output_size(5000, 5000, scale=100)


def test_gaussians_for_budget_paper_or_explicit():
    assert gaussians_for_budget(512, 768, 20, "paper") == 3 * 512 * 768 // (7 * 20) == 8426
    assert gaussians_for_budget(512, 768, 20, 1234) == 1234
    for bad, needle in (("many", "'many' must be 'paper', 'auto' or an integer"),
                        ("auto", "'auto' is chosen by fitting pilots"),
                        (True, "True must be"), (2.5, "2.5 must be"),
                        (0, "0 must be in [1, 393216]"), (10 ** 7, "must be in [1, 393216]")):
        with pytest.raises(ValueError) as e:
            gaussians_for_budget(512, 768, 20, bad)
        assert needle in str(e.value), (bad, str(e.value))
