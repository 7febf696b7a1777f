"""smartsplat_jax.metrics and losses.ssim against an independent float64 scipy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from smartsplat_jax import losses, metrics
from smartsplat_jax.io import load_image

from helpers import enable_x64

# ---- independent reference (2D correlation in float64; pooling by reshape) ----------------


def _window2d():
    k = np.arange(11) - 5.0
    g = np.exp(-k**2 / 4.5)
    g /= g.sum()
    return np.outer(g, g)


def _maps(x, y, valid):
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    w = _window2d()
    f = lambda a: np.stack([ndimage.correlate(a[..., c], w, mode="constant", cval=0.0)
                            for c in range(a.shape[2])], -1)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 1e-4, 9e-4
    cs = (2 * cxy + c2) / (vx + vy + c2)
    ss = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
    if valid:
        ss, cs = ss[5:-5, 5:-5], cs[5:-5, 5:-5]
    return ss, cs


def ref_ssim(x, y):
    return _maps(x, y, valid=False)[0].mean()


def _pool(a):
    h, w, c = a.shape
    ph, pw = h % 2, w % 2
    p = np.pad(a, ((ph, ph), (pw, pw), (0, 0)))
    H2, W2 = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
    p = p[:H2, :W2]
    return p.reshape(H2 // 2, 2, W2 // 2, 2, c).mean(axis=(1, 3))


def ref_ms_ssim(x, y):
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    x, y = x.astype(np.float64), y.astype(np.float64)
    vals = []
    for i in range(5):
        ss, cs = _maps(x, y, valid=True)
        if i < 4:
            vals.append(np.maximum(cs.mean(axis=(0, 1)), 0))
            x, y = _pool(x), _pool(y)
        else:
            vals.append(np.maximum(ss.mean(axis=(0, 1)), 0))
    return np.prod(np.stack(vals) ** weights[:, None], axis=0).mean()


def ref_psnr(x, y):
    return 10 * np.log10(1 / np.mean((x.astype(np.float64) - y) ** 2))


def _distort(img, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1).astype(np.float32)
    if kind == "blur":
        return ndimage.gaussian_filter(img, (2, 2, 0)).astype(np.float32)
    if kind == "quantize":
        return (np.round(img * 7) / 7).astype(np.float32)
    raise ValueError(kind)


# ---- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kind", [("kodim01.png", "noise"), ("kodim04.png", "blur"),
                                       ("kodim23.png", "quantize")])
def test_metrics_match_reference_on_photos(kodak_dir, name, kind):
    a = load_image(kodak_dir / name)
    b = _distort(a, kind)
    assert abs(metrics.psnr(a, b) - ref_psnr(a, b)) < 1e-4
    assert abs(metrics.ssim(a, b) - ref_ssim(a, b)) < 1e-4
    assert abs(metrics.ms_ssim(a, b) - ref_ms_ssim(a, b)) < 1e-4


@pytest.mark.parametrize("shape", [(161, 161), (171, 203), (256, 190), (333, 222)])
def test_ms_ssim_odd_sizes_synthetic(shape):
    rng = np.random.default_rng(sum(shape))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a = (0.5 + 0.4 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None]
         * np.array([1, 0.7, 0.4])).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    assert abs(metrics.ms_ssim(a, b) - ref_ms_ssim(a, b)) < 1e-4


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (12, 40), (37, 29), (100, 64)])
def test_ssim_synthetic_sizes(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    a = rng.random(shape + (3,)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    assert abs(metrics.ssim(a, b) - ref_ssim(a, b)) < 1e-4
    # The training loss's SSIM is the same function, with either blur layout.
    for constant in (False, True):
        got = float(losses.ssim(jnp.asarray(a), jnp.asarray(b), y_is_constant=constant))
        assert abs(got - ref_ssim(a, b)) < 1e-4


def test_banding_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(5)
    a = rng.random((200, 180, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    whole = (metrics.ssim(a, b), metrics.ms_ssim(a, b), metrics.psnr(a, b))
    monkeypatch.setattr(metrics, "BAND_PIXELS", 8 * 180)  # bands of 8 rows
    banded = (metrics.ssim(a, b), metrics.ms_ssim(a, b), metrics.psnr(a, b))
    np.testing.assert_allclose(banded, whole, atol=2e-6)


def test_identical_and_constant_images():
    a = np.full((170, 170, 3), 0.3, np.float32)
    assert metrics.psnr(a, a) == float("inf")
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    b = np.full_like(a, 0.4)
    assert metrics.psnr(a, b) == pytest.approx(20.0, abs=1e-4)
    assert metrics.ssim(a, b) == pytest.approx(ref_ssim(a, b), abs=1e-4)


def test_returns_python_floats():
    a = np.random.default_rng(0).random((170, 165, 3)).astype(np.float32)
    for f in (metrics.psnr, metrics.ssim, metrics.ms_ssim):
        assert type(f(a, a * 0.9)) is float


def test_accepts_jax_arrays():
    a = jnp.asarray(np.random.default_rng(0).random((20, 30, 3)), jnp.float32)
    assert metrics.ssim(a, a * 0.5) == pytest.approx(ref_ssim(np.asarray(a), np.asarray(a) * 0.5), abs=1e-4)


def test_ms_ssim_too_small():
    a = np.zeros((160, 500, 3), np.float32)
    with pytest.raises(ValueError, match=r"160x500.*over 160 pixels"):
        metrics.ms_ssim(a, a)


@pytest.mark.parametrize("f", [metrics.psnr, metrics.ssim, metrics.ms_ssim])
def test_bad_shapes(f):
    with pytest.raises(ValueError, match="shapes differ"):
        f(np.zeros((10, 10, 3)), np.zeros((10, 11, 3)))
    with pytest.raises(ValueError, match=r"expected \(H, W, 3\)"):
        f(np.zeros((10, 10)), np.zeros((10, 10)))


def test_ssim_loss_gradient_check():
    from jax.test_util import check_grads

    with enable_x64():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.random((13, 12, 3)))
        y = jnp.asarray(rng.random((13, 12, 3)))
        check_grads(lambda a: losses.ssim(a, y), (x,), order=1, modes=("rev",))
        check_grads(lambda a: losses.smartsplat_loss(a, y), (x,), order=1, modes=("rev",))


@pytest.mark.parametrize("shape", [(1, 1), pytest.param((6, 9), marks=pytest.mark.slow),
                                   (23, 17)])  # ~10 s each
def test_hand_written_ssim_gradient_equals_autodiff(shape):
    # The training loss's SSIM against a constant target has a hand-written backward pass;
    # autodiff through the general path (y not constant) is the oracle, in float64.
    with enable_x64():
        rng = np.random.default_rng(shape[0])
        x = jnp.asarray(rng.random(shape + (3,)))
        y = jnp.asarray(np.clip(np.asarray(x) + rng.normal(0, 0.2, x.shape), 0, 1))
        g_hand = jax.grad(lambda a: losses.ssim(a, y, y_is_constant=True))(x)
        g_auto = jax.grad(lambda a: losses.ssim(a, y))(x)
        np.testing.assert_allclose(g_hand, g_auto, rtol=1e-9, atol=1e-12)
        # No gradient reaches the target.
        g_y = jax.grad(lambda b: losses.ssim(x, b, y_is_constant=True))(y)
        assert float(jnp.max(jnp.abs(g_y))) == 0.0


def test_weighted_ssim_to_target_value_and_gradient():
    # A 0/1 mask and random weights (as the sharded loss's blocks use): the value is the
    # weighted sum of the oracle's 'valid' map, the hand-written gradient equals autodiff
    # through the general maps, and no gradient reaches the target or the weights.
    from smartsplat_jax import filters

    with enable_x64():
        rng = np.random.default_rng(3)
        x = rng.random((21, 16, 3))
        y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
        w = rng.random((11, 6, 3)) * (rng.random((11, 6, 3)) > 0.3)
        got = float(filters.weighted_ssim_to_target(jnp.asarray(x), jnp.asarray(y),
                                                    jnp.asarray(w), 0))
        ref_map = _maps(x, y, valid=True)[0]
        assert got == pytest.approx(float(np.sum(w * ref_map)), rel=1e-10)
        f_hand = lambda a, b, c: filters.weighted_ssim_to_target(a, b, c, 0)
        f_auto = lambda a, b, c: jnp.sum(c * filters.ssim_maps_valid(a, b)[0])
        args = tuple(jnp.asarray(v) for v in (x, y, w))
        g_hand = jax.grad(f_hand, argnums=(0, 1, 2))(*args)
        g_auto = jax.grad(f_auto)(*args)
        np.testing.assert_allclose(g_hand[0], g_auto, rtol=1e-9, atol=1e-12)
        assert float(jnp.max(jnp.abs(g_hand[1]))) == 0.0 == float(jnp.max(jnp.abs(g_hand[2])))


def test_blur_lowerings_agree_with_an_oracle():
    # The 'valid' blur has two lowerings (slices; on CPU, convolutions for the training
    # loss inside its scan): both equal a direct numpy correlation, as a plain call and
    # inside a lax.scan.
    from smartsplat_jax import filters

    with enable_x64():
        rng = np.random.default_rng(4)
        x = rng.random((4, 30, 25))
        taps = np.asarray(filters.window_taps())
        k = len(taps)
        rows = sum(taps[i] * x[:, i:i + 30 - k + 1] for i in range(k))
        oracle = sum(taps[i] * rows[:, :, i:i + 25 - k + 1] for i in range(k))
        for fn in (filters._correlate_valid, filters._correlate_conv, filters._correlate_in_loop):
            plain = jax.jit(fn, static_argnums=1)(jnp.asarray(x), filters.window_taps())
            looped = jax.lax.scan(lambda c, _: (c, fn(c, filters.window_taps())),
                                  jnp.asarray(x), None, length=2)[1]
            np.testing.assert_allclose(plain, oracle, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(looped[1], oracle, rtol=1e-12, atol=1e-14)


def test_smartsplat_loss_value():
    rng = np.random.default_rng(1)
    a = rng.random((20, 20, 3)).astype(np.float32)
    b = rng.random((20, 20, 3)).astype(np.float32)
    expect = 0.9 * np.abs(a - b).mean() + 0.1 * (1 - ref_ssim(a, b))
    assert float(losses.smartsplat_loss(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(expect, abs=1e-5)
    expect8 = 0.8 * np.abs(a - b).mean() + 0.2 * (1 - ref_ssim(a, b))
    assert float(losses.smartsplat_loss(jnp.asarray(a), jnp.asarray(b), 0.8)) == pytest.approx(expect8, abs=1e-5)


def test_quality_matches_the_metrics_and_skips_ms_ssim_when_too_small():
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (170, 180, 3)).astype(np.float32)
    b = np.clip(a + 0.02, 0, 1)
    q = metrics.quality(b, a)
    assert q == {"psnr": metrics.psnr(b, a), "ssim": metrics.ssim(b, a),
                 "ms_ssim": metrics.ms_ssim(b, a)}
    small = metrics.quality(b[:160], a[:160])
    assert small["ms_ssim"] is None and small["psnr"] == metrics.psnr(b[:160], a[:160])
