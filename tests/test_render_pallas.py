"""smartsplat_jax.render.pallas: the Pallas kernels (interpreted on CPU) vs xla and the oracle.

Every test here runs the kernels with interpret=True (the CPU default), so scenes are small.
"""

import logging
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from smartsplat_jax import params as P
from smartsplat_jax.render import auto, render, render_reference, render_xla, resolve_backend
from smartsplat_jax.render import pallas as PL
from smartsplat_jax.render import xla as X
from smartsplat_jax.train import FitConfig, fit

from helpers import enable_x64, scene

FIELDS = ("means", "scales", "rotation", "colors", "opacity")


def _fwd_and_grads(fn, p, h, w, seed=0):
    """(image [h, w, 3], gradient pytree) of sum(cot * fn(p)) for a random cotangent."""
    img, vjp = jax.vjp(lambda q: fn(q, h, w, clamp=False), p)
    cot = jnp.asarray(np.random.default_rng(seed).normal(size=(h, w, 3)), img.dtype)
    return img, vjp(cot)[0]


def _assert_grads_close(ga, gb, rel):
    for f in FIELDS:
        a, b = np.asarray(getattr(ga, f)), np.asarray(getattr(gb, f))
        scale = max(float(np.max(np.abs(b))), 1e-30)
        assert np.linalg.norm(a - b) <= rel * max(np.linalg.norm(b), 1e-30), f
        np.testing.assert_allclose(a, b, rtol=rel, atol=rel * scale, err_msg=f)


def _tile_pair_counts(p, h, w, tile=PL.DEFAULT_TILE):
    proj = X.project(p, h, w, tile)
    b = PL.bin_pairs(proj, h, w, tile, PL.pair_capacity(p, h, w, tile))
    return np.diff(np.asarray(b.bounds))


@pytest.mark.parametrize("h,w", [
    pytest.param(1, 17, marks=pytest.mark.slow), (21, 37),  # ~10-25 s each, interpreted
    pytest.param(45, 29, marks=pytest.mark.slow), (40, 70)])
def test_forward_and_gradients_equal_xla(h, w):
    # Random scenes with every awkward case: Gaussians outside the image, a huge one over every
    # tile, a singular one, 300 piled in one tile (> 256 pairs there), odd image sizes.
    p = scene(h * 1000 + w, 200, h, w)
    per_tile = _tile_pair_counts(p, h, w)
    assert per_tile.max() > 256
    a, ga = _fwd_and_grads(PL.render_pallas, p, h, w)
    b, gb = _fwd_and_grads(render_xla, p, h, w)
    chex.assert_shape(a, (h, w, 3))
    chex.assert_type(a, jnp.float32)
    # The image (clamped to [0, 1]) to 1e-5; the raw sums, up to ~25 where 300 Gaussians
    # pile up, to 1e-5 relative (float32 sums in another order).
    assert float(jnp.max(jnp.abs(jnp.clip(a, 0, 1) - jnp.clip(b, 0, 1)))) <= 1e-5
    assert float(jnp.max(jnp.abs(a - b) / jnp.maximum(1.0, jnp.abs(b)))) <= 1e-5
    _assert_grads_close(ga, gb, 1e-4)


@pytest.mark.slow  # interpreted Pallas on CPU: 25-75 s
def test_empty_tiles_and_batch_boundaries_equal_reference_float64():
    # Tiles holding exactly 0, 1, batch, batch + 1 and 2 batch + 1 Gaussians: every way the
    # kernels' inner loop can start and stop. Compared with the dense oracle in float64.
    h, w, t, bsz = 48, 80, PL.DEFAULT_TILE, PL.DEFAULT_BATCH
    centres = []
    for (tx, ty), k in [((0, 0), 1), ((2, 0), bsz), ((4, 1), bsz + 1), ((1, 2), 2 * bsz + 1)]:
        rng = np.random.default_rng(k)
        centres += [(tx * t + rng.uniform(5, 11), ty * t + rng.uniform(5, 11)) for _ in range(k)]
    c = np.asarray(centres)
    n = len(c)
    with enable_x64():
        p = P.GaussianParams.create(
            means=np.stack([2 * c[:, 0] / w - 1, 2 * c[:, 1] / h - 1], 1),
            scales=np.random.default_rng(1).uniform(0.5, 1.2, (n, 2)),
            colors=np.random.default_rng(2).uniform(0, 1, (n, 3)),
            rotation=np.random.default_rng(3).normal(size=(n, 1)), dtype=jnp.float64)
        counts = _tile_pair_counts(p, h, w)
        assert {0, 1, bsz, bsz + 1, 2 * bsz + 1} <= set(counts.tolist())
        a, ga = _fwd_and_grads(PL.render_pallas, p, h, w)
        b, gb = _fwd_and_grads(render_reference, p, h, w)
        chex.assert_type(a, jnp.float64)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-12
        _assert_grads_close(ga, gb, 1e-10)


def test_random_scene_equals_reference_float64():
    with enable_x64():
        h, w = 19, 23
        p = scene(11, 120, h, w, aniso=20.0, min_scale=0.1, dtype=jnp.float64)
        a, ga = _fwd_and_grads(PL.render_pallas, p, h, w, seed=3)
        b, gb = _fwd_and_grads(render_reference, p, h, w, seed=3)
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-12
        _assert_grads_close(ga, gb, 1e-9)


def test_check_grads_tiny_scene():
    with enable_x64():
        # Smooth region of the function: centres off the pixel grid, all alphas < 1.
        p = P.GaussianParams.create(
            means=[[-0.31, 0.12], [0.27, -0.43], [0.05, 0.33]],
            scales=[[2.1, 1.3], [1.7, 2.6], [3.2, 1.9]],
            colors=[[0.2, 0.5, 0.7], [0.9, 0.1, 0.4], [0.3, 0.8, 0.2]],
            rotation=[[0.4], [-1.1], [2.0]], opacity=[[0.7], [0.8], [0.6]], dtype=jnp.float64)
        f = lambda q: PL.render_pallas(q, 13, 17, clamp=False)
        check_grads(f, (p,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_binning_lists_each_tiles_gaussians_in_order():
    h, w, tile = 45, 61, 8
    p = scene(4, 150, h, w)
    proj = X.project(p, h, w, tile)
    total = X.pair_count(p, h, w, tile)
    b = PL.bin_pairs(proj, h, w, tile, total + 5)
    gid, order, bounds = (np.asarray(v) for v in (b.gid, b.order, b.bounds))
    assert int(b.total) == total and bounds[-1] == total and np.all(np.diff(bounds) >= 0)
    tx0, ty0, wx = (np.asarray(v) for v in (proj.tx0, proj.ty0, proj.wx))
    counts = np.asarray(proj.counts)
    tiles_x = -(-w // tile)
    sorted_gid = gid[order]
    for t in range(len(bounds) - 1):
        ty, tx = divmod(t, tiles_x)
        hy = counts // np.maximum(wx, 1)
        want = np.nonzero((counts > 0) & (tx0 <= tx) & (tx < tx0 + wx)
                          & (ty0 <= ty) & (ty < ty0 + hy))[0]
        np.testing.assert_array_equal(sorted_gid[bounds[t]:bounds[t + 1]], want)


@pytest.mark.slow  # interpreted Pallas on CPU: 25-75 s
def test_overflow_falls_back_to_xla_and_exact_capacity_uses_kernels():
    h, w = 30, 44
    p = scene(8, 150, h, w)
    total = X.pair_count(p, h, w, PL.DEFAULT_TILE)
    ref, gref = _fwd_and_grads(render_xla, p, h, w)
    big, gbig = _fwd_and_grads(lambda *a, **k: PL.render_pallas(*a, capacity=4 * total, **k),
                               p, h, w)
    exact, gexact = _fwd_and_grads(lambda *a, **k: PL.render_pallas(*a, capacity=total, **k),
                                   p, h, w)
    small, gsmall = _fwd_and_grads(
        lambda *a, **k: PL.render_pallas(*a, capacity=total - 1, **k), p, h, w)
    # Same pairs in the same order: the kernel path does not depend on the capacity.
    np.testing.assert_array_equal(big, exact)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(gbig, f), getattr(gexact, f))
    # One pair short: the kernels alone would miss a visible contribution (the last pair is
    # the huge Gaussian's last tile) ...
    proj = X.project(p, h, w, PL.DEFAULT_TILE)
    cut = PL.bin_pairs(proj, h, w, PL.DEFAULT_TILE, total - 1)
    missing = PL._rasterize(proj.feats, cut.gid, cut.order, cut.bounds, h, w, PL.DEFAULT_TILE,
                            PL.DEFAULT_BATCH, True)
    assert float(jnp.max(jnp.abs(missing - ref))) > 0.05
    # ... so the render falls back to the xla rasterizer, as on its own (up to XLA's fusion).
    np.testing.assert_allclose(small, ref, rtol=2e-6, atol=1e-6)
    _assert_grads_close(gsmall, gref, 1e-5)
    assert float(jnp.max(jnp.abs(big - ref))) <= 1e-5


@pytest.mark.slow  # ~20 s interpreted
def test_public_render_pallas_is_deterministic_and_jittable():
    h, w = 26, 35
    p = scene(2, 120, h, w)
    tgt = jnp.asarray(np.random.default_rng(0).random((h, w, 3)), jnp.float32)
    loss = lambda q, backend: jnp.mean(jnp.abs(render(q, h, w, backend=backend) - tgt))
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(p, "pallas")
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(p, "pallas")
    gx = jax.grad(loss)(p, "xla")
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(g1, f), getattr(g2, f))
    _assert_grads_close(g1, gx, 1e-4)
    # Eager call: the capacity comes from the actual pair count.
    img = render(p, h, w, backend="pallas")
    np.testing.assert_allclose(img, render(p, h, w, backend="xla"), atol=1e-5)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


@pytest.mark.slow  # interpreted Pallas on CPU: 25-75 s
def test_short_training_run_matches_xla():
    h, w = 24, 32
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / 10.0
    image = np.stack([0.5 + 0.4 * np.sin(xx), 0.5 + 0.4 * np.cos(yy), 0.3 + 0.2 * xx / 3], -1)
    n = 40
    p0 = P.GaussianParams.create(means=rng.uniform(-0.9, 0.9, (n, 2)),
                                 scales=rng.uniform(1.5, 3.5, (n, 2)),
                                 colors=rng.uniform(0.2, 0.8, (n, 3)))
    runs = {}
    for backend in ("pallas", "xla"):
        config = FitConfig(steps=12, chunk_steps=6, eval_every=0, backend=backend)
        runs[backend] = fit(image.astype(np.float32), p0, config, progress=False)
    (pp, hp), (px, hx) = runs["pallas"], runs["xla"]
    np.testing.assert_allclose(hp["loss"], hx["loss"], rtol=1e-4)
    assert hp["loss"][-1] < hp["loss"][0]
    for f in ("means", "scales", "rotation", "colors"):
        np.testing.assert_allclose(getattr(pp, f), getattr(px, f), rtol=1e-3, atol=1e-4,
                                   err_msg=f)


@pytest.mark.slow  # interpreted Pallas on CPU: 25-75 s
def test_cholesky_params_equal_xla():
    # GaussianImage's Cholesky parameterisation goes through the same projection.
    rng = np.random.default_rng(5)
    n, h, w = 40, 20, 24
    cp = P.CholeskyParams(
        means=jnp.asarray(rng.uniform(-1.1, 1.1, (n, 2)), jnp.float32),
        cholesky=jnp.asarray(rng.uniform(0.3, 3.0, (n, 3)) * rng.choice([-1, 1], (n, 3)),
                             jnp.float32),
        colors=jnp.asarray(rng.uniform(0, 1, (n, 3)), jnp.float32),
        opacity=jnp.ones((n, 1), jnp.float32))
    a, ga = _fwd_and_grads(PL.render_pallas, cp, h, w)
    b, gb = _fwd_and_grads(render_xla, cp, h, w)
    np.testing.assert_allclose(a, b, atol=2e-6)
    chex.assert_trees_all_close(ga, gb, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(gb.means))))


def _fake_gpu(cc: str, kind: str = "Fake GPU"):
    return types.SimpleNamespace(platform="gpu", compute_capability=cc, device_kind=kind)


def test_triton_support_by_compute_capability():
    assert PL.triton_supported(_fake_gpu("9.0"))[0]
    assert PL.triton_supported(_fake_gpu("8.0"))[0]
    ok, why = PL.triton_supported(_fake_gpu("7.5", "Tesla T4"))
    assert not ok and "Tesla T4" in why and "8.0" in why
    ok, why = PL.triton_supported(jax.devices("cpu")[0])
    assert not ok and "cpu" in why


def test_a_jax_without_the_triton_backend_is_not_supported(monkeypatch):
    """Pallas's Triton lowering is deprecated: where a jax no longer ships it, no GPU is
    "supported", so "auto" decodes and trains with xla instead of failing to compile."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name == "jax.experimental.pallas.triton" else real(name, *a))
    ok, why = PL.triton_supported(_fake_gpu("9.0"))
    assert not ok and "no Pallas Triton backend" in why and jax.__version__ in why
    assert auto.auto_backend(_fake_gpu("9.0"), forward_only=True) == "xla"


def test_auto_is_xla_on_cpu_and_says_why(caplog, monkeypatch):
    monkeypatch.setattr(auto, "_decisions", {})
    with caplog.at_level(logging.INFO, logger="smartsplat_jax.render"):
        assert resolve_backend("auto", jax.devices("cpu")[0]) == "xla"
    assert "-> xla" in caplog.text and "cpu" in caplog.text
    assert resolve_backend("pallas") == "pallas"
    with pytest.raises(ValueError, match="backend='cuda'"):
        resolve_backend("cuda")


def test_auto_for_decoding_never_probes(monkeypatch):
    # A forward-only render (decoding) picks by kernel support alone: no timing probe, so no
    # forward+backward programs are compiled for a decode.
    def no_probe(*a, **k):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(auto, "_time_fwd_bwd", no_probe)
    monkeypatch.setattr(auto, "_decisions", {})
    assert resolve_backend("auto", _fake_gpu("9.0"), forward_only=True) == "pallas"
    assert resolve_backend("auto", _fake_gpu("7.5", "Tesla T4"), forward_only=True) == "xla"
    assert resolve_backend("auto", jax.devices("cpu")[0], forward_only=True) == "xla"
    assert auto._decisions == {}


@pytest.mark.parametrize("t_xla,t_pallas,error,want", [
    (3.0, 1.0, None, "pallas"), (1.0, 1.0, None, "xla"), (1.0, 3.0, None, "xla"),
    (1.0, 1.0, RuntimeError("no kernel image"), "xla")])
def test_auto_on_a_supported_gpu_picks_pallas_only_when_measured_faster(
        monkeypatch, caplog, t_xla, t_pallas, error, want):
    def fake_time(backend, params, size):
        if error is not None and backend == "pallas":
            raise error
        return {"xla": t_xla, "pallas": t_pallas}[backend]

    monkeypatch.setattr(auto, "_decisions", {})
    monkeypatch.setattr(auto, "_time_fwd_bwd", fake_time)
    monkeypatch.setattr(auto, "_probe_params", lambda size, cr: None)
    dev = _fake_gpu("9.0", "NVIDIA H200")
    with caplog.at_level(logging.INFO, logger="smartsplat_jax.render"):
        assert auto.auto_backend(dev) == want
        assert auto.auto_backend(dev) == want  # memoized: logged once
    assert caplog.text.count("render backend") == 1
    backend, why = auto.decisions()["gpu:NVIDIA H200"]
    assert backend == want
    assert ("no kernel image" in why) if error else ("ms" in why)
    # Below Ampere the probe never runs.
    assert auto.auto_backend(_fake_gpu("7.5", "Tesla T4")) == "xla"


@pytest.mark.slow  # interpreted Pallas on CPU: 25-75 s
def test_auto_probe_runs_even_when_first_resolved_inside_jit(monkeypatch):
    # The real probe (both backends timed; here on the CPU, at 48x48), started while a
    # function is being traced: it must measure eagerly, not fail or get staged.
    monkeypatch.setattr(auto, "_decisions", {})
    monkeypatch.setattr(auto, "_PROBE_SIZE", 48)
    monkeypatch.setattr(auto, "_PROBE_REPEATS", 1)
    dev = _fake_gpu("9.0", "Probe GPU")
    seen = []

    @jax.jit
    def f(x):
        seen.append(auto.auto_backend(dev))
        return x + 1

    np.testing.assert_array_equal(f(jnp.zeros(2)), [1.0, 1.0])
    backend, why = auto.decisions()["gpu:Probe GPU"]
    assert seen == [backend] and backend in ("xla", "pallas")
    assert "probe 48x48" in why and "failed" not in why


def test_a_traced_render_with_auto_never_probes(monkeypatch):
    # "auto" inside a function being traced takes the decision a caller made, or the
    # probe-free rule; it neither probes nor records a decision while tracing.
    def no_probe(*a, **k):
        raise AssertionError("the probe ran")

    monkeypatch.setattr(auto, "_decide", no_probe)
    monkeypatch.setattr(auto, "_decisions", {})
    assert auto.traced_choice(_fake_gpu("9.0", "Fake H100")) == "pallas"
    assert auto.traced_choice(_fake_gpu("7.5", "Tesla T4")) == "xla"
    assert auto._decisions == {}
    monkeypatch.setattr(auto, "_decisions", {"gpu:Fake H100": ("xla", "measured")})
    assert auto.traced_choice(_fake_gpu("9.0", "Fake H100")) == "xla"  # the caller's decision

    monkeypatch.setattr(auto, "_decisions", {})
    p = scene(1, 6, 12, 10, extras=False)
    out = jax.jit(lambda q: render(q, 12, 10, backend="auto"))(p)
    assert auto._decisions == {}
    np.testing.assert_allclose(out, render_xla(p, 12, 10), rtol=1e-6, atol=1e-7)


def test_bad_static_arguments_are_named():
    p = scene(0, 5, 8, 8, extras=False)
    with pytest.raises(ValueError, match="tile=12"):
        PL.render_pallas(p, 8, 8, tile=12)
    with pytest.raises(ValueError, match="batch=0"):
        PL.render_pallas(p, 8, 8, batch=0)
    with pytest.raises(ValueError, match="capacity=0"):
        PL.render_pallas(p, 8, 8, capacity=0)


def test_empty_params_render_black():
    p = P.GaussianParams.create(means=np.zeros((0, 2)), scales=np.zeros((0, 2)),
                                colors=np.zeros((0, 3)))
    np.testing.assert_array_equal(PL.render_pallas(p, 5, 6), np.zeros((5, 6, 3)))


def _lower_for_cuda(fn, *args, cc: int):
    """Lowers `fn` for CUDA on this CPU-only machine, as a GPU with compute capability `cc`."""
    reg = pytest.importorskip("jax._src.pallas.triton.pallas_call_registration")
    patch = pytest.MonkeyPatch()
    if hasattr(reg, "gpu_info_lib"):  # jax >= 0.11 asks the GPU for its capability
        patch.setattr(reg.gpu_info_lib, "get_gpu_info",
                      lambda *a, **k: types.SimpleNamespace(compute_capability=cc))
    try:
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    finally:
        patch.undo()


@pytest.mark.parametrize("cc", [80, 90])
def test_kernels_lower_to_triton_for_cuda(cc):
    # Catches any operation or block shape the GPU (Triton) lowering rejects, without a GPU.
    p = scene(1, 30, 20, 36, extras=False)
    f = jax.grad(lambda q: jnp.sum(PL.render_pallas(q, 20, 36, interpret=False)))
    text = _lower_for_cuda(f, p, cc=cc)
    assert text.count("__gpu$xla.gpu.triton") == 2  # the forward and the backward kernel


@pytest.mark.skipif(jax.default_backend() != "gpu" or not PL.triton_supported()[0],
                    reason="needs a GPU the Triton kernels support (compute capability >= 8.0)")
@pytest.mark.parametrize("h,w", [(45, 29), (300, 517)])
def test_compiled_kernels_equal_xla_on_gpu(h, w):
    # The same contract as the interpreted tests, for the kernels compiled by Triton.
    p = scene(h + w, 400, h, w)
    a, ga = _fwd_and_grads(lambda *x, **k: PL.render_pallas(*x, interpret=False, **k), p, h, w)
    b, gb = _fwd_and_grads(render_xla, p, h, w)
    assert float(jnp.max(jnp.abs(a - b) / jnp.maximum(1.0, jnp.abs(b)))) <= 1e-5
    _assert_grads_close(ga, gb, 1e-4)
