"""smartsplat_jax.train and the launchers: optimizer groups, fitting, resume, NaN handling."""

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jax.numpy as jnp

from smartsplat_jax import codec, load_image, metrics, num_gaussians, save_image
from smartsplat_jax import params as P
from smartsplat_jax.codec.rate import BudgetQuantizer, byte_budget
from smartsplat_jax.pipeline import encode_trained, load_params
from smartsplat_jax.render import render
from smartsplat_jax.train import (config_for_method, default_qat_steps, fit,
                                  initialize, make_optimizer)
from smartsplat_jax.train.loop import _run_chunk, qat_schedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory):
    """A 96 x 128 crop of a real photo (the bundled demo image)."""
    from smartsplat_jax import DEMO_IMAGE

    img = load_image(DEMO_IMAGE)[150:246, 250:378]
    path = tmp_path_factory.mktemp("img") / "crop.png"
    save_image(path, img)
    return path, load_image(path)


def test_optimizer_groups_one_adam_step_by_hand():
    cfg = config_for_method("smartsplat")
    p = P.GaussianParams.create(means=[[0.1, -0.2]], scales=[[2.0, 3.0]], colors=[[0.5, 0.5, 0.5]],
                                rotation=[[0.3]], opacity=[[1.0]])
    g = P.GaussianParams.create(means=[[0.7, -2.0]], scales=[[-0.1, 4.0]], colors=[[1.0, -1.0, 3.0]],
                                rotation=[[-5.0]], opacity=[[2.0]])
    opt = make_optimizer(cfg)
    upd, _ = opt.update(g, opt.init(p), p)
    # First Adam step: m_hat = g, v_hat = g^2, so the update is -lr * g / (|g| + 1e-15)
    # (float32 bias corrections leave ~1e-5 relative error; a wrong rate is off by factors).
    expect = {"means": 1e-4, "scales": 5e-2, "colors": 5e-3, "rotation": 1e-3, "opacity": 0.0}
    for name, lr in expect.items():
        gv = np.asarray(getattr(g, name), np.float64)
        np.testing.assert_allclose(getattr(upd, name), -lr * gv / (np.abs(gv) + 1e-15), rtol=2e-5,
                                   err_msg=name)


def test_adan_is_gaussianimages_adan_by_hand():
    # Two steps on one scalar with gradients of a pixel-mean L2 loss's size (2e-6, then -1e-6),
    # worked out by hand from GaussianImage's optimizer.py (betas 0.98/0.92/0.99, eps 1e-8):
    # step 1: m^ = g, n^ = g^2, no difference yet: g / (|g| + 1e-8) = 2 / 2.01;
    # step 2: diff = -3e-6, m^ = 1.92e-8 / 0.0396, d^ = 0.08 * diff / 0.1536,
    #         n^ = (0.99 * 0.01 * 4e-12 + 0.01 * (3.76e-6)^2) / 0.0199:
    #         (m^ + 0.92 d^) / (sqrt(n^) + 1e-8) = -0.3148563.
    from smartsplat_jax.train.optim import adan

    lr = 1e-3
    opt = adan(lr)
    p = {"x": jnp.zeros((), jnp.float32)}
    state = opt.init(p)
    u1, state = opt.update({"x": jnp.float32(2e-6)}, state, p)
    u2, state = opt.update({"x": jnp.float32(-1e-6)}, state, p)
    assert float(u1["x"]) == pytest.approx(-lr * 2 / 2.01, rel=1e-5)
    assert float(u2["x"]) == pytest.approx(-lr * -0.3148563, rel=1e-5)
    # optax.adan (eps_root 1e-8 inside the root) would move ~50x less on the first step.
    o = optax.adan(lr)
    v1, _ = o.update({"x": jnp.float32(2e-6)}, o.init(p), p)
    assert abs(float(v1["x"])) < abs(float(u1["x"])) / 40


def test_gaussianimage_config_and_schedule():
    cfg = config_for_method("gaussianimage-rs")
    assert (cfg.loss, cfg.optimizer, cfg.lr_halve_every) == ("l2", "adan", 20000)
    with pytest.raises(ValueError, match="method='nope'"):
        config_for_method("nope")
    with pytest.raises(ValueError, match="steps=0"):
        config_for_method("smartsplat", steps=0)
    with pytest.raises(ValueError, match="backend='gpu'"):
        config_for_method("smartsplat", backend="gpu")


@pytest.mark.parametrize("name", ["adam", "adan"])
def test_rate_schedule_matches_optax(name):
    # The per-group rates with their halving schedule (traced values) against optax's own
    # transforms with the same rates as constants and exponential_decay(staircase=True).
    from smartsplat_jax.train.optim import adan

    cfg = config_for_method("smartsplat", optimizer=name, lr_halve_every=3, lr_opacity=1e-2)
    rates = {g: getattr(cfg, f"lr_{g}") for g in ("means", "scales", "rotation", "colors",
                                                  "opacity")}

    def oracle_group(lr):
        sched = optax.exponential_decay(lr, transition_steps=3, decay_rate=0.5, staircase=True)
        return adan(sched) if name == "adan" else optax.adam(sched, b1=0.9, b2=0.999, eps=1e-15)

    labels = P.GaussianParams(means="means", scales="scales", rotation="rotation",
                              colors="colors", opacity="opacity")
    oracle = optax.multi_transform({g: oracle_group(lr) for g, lr in rates.items()}, labels)
    ours = make_optimizer(cfg)
    rng = np.random.default_rng(0)
    p = P.GaussianParams.create(means=rng.normal(size=(4, 2)), scales=rng.normal(size=(4, 2)),
                                colors=rng.normal(size=(4, 3)), rotation=rng.normal(size=(4, 1)))
    s_ours, s_oracle = ours.init(p), oracle.init(p)
    for _ in range(8):
        g = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), p)
        u, s_ours = ours.update(g, s_ours, p)
        v, s_oracle = oracle.update(g, s_oracle, p)
        for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(v)):
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-12)


def test_hyperparameters_are_traced_and_auto_is_resolved_first(small_photo, monkeypatch):
    """Learning rates, their schedule, the loss weight, the colour box, the step count and the
    host-side fields change a run without compiling another training step; backend "auto" is
    resolved by `fit` before anything is compiled."""
    from smartsplat_jax.render import auto
    from smartsplat_jax.train import loop

    _, img = small_photo
    h, w = img.shape[:2]
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(3), img, num_gaussians(h, w, 10))
    base = dict(steps=20, chunk_steps=10, eval_every=0, checkpoint_every=0)
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["config"].backend)
        return _run_chunk(*args, **kwargs)

    monkeypatch.setattr(loop, "_run_chunk", spy)
    monkeypatch.setattr(auto, "_decisions", {})
    ref, hist = fit(img, p0, config_for_method("smartsplat", backend="auto", **base),
                    progress=False)
    assert set(seen) == {"xla"} and hist["backend"] == "xla"
    compiled = _run_chunk._cache_size()
    runs = {}
    for key, kw in {"frozen colours": dict(lr_colors=0.0), "halving": dict(lr_halve_every=5),
                    "lambda": dict(lambda_l1=0.5), "box": dict(color_bounds=(0.3, 0.6)),
                    "longer": dict(steps=30, eval_every=10, max_retries=1)}.items():
        runs[key] = fit(img, p0, config_for_method("smartsplat", backend="xla",
                                                   **{**base, **kw}), progress=False)
    assert _run_chunk._cache_size() == compiled  # no new training program
    np.testing.assert_array_equal(runs["frozen colours"][0].colors, p0.colors)
    assert not np.array_equal(runs["frozen colours"][0].means, p0.means)
    colors = np.asarray(runs["box"][0].colors)
    assert colors.min() >= 0.3 and colors.max() <= 0.6
    for key in ("halving", "lambda"):
        assert not np.array_equal(runs[key][0].scales, ref.scales), key
    assert runs["longer"][1]["step"] == [10, 20, 30]


def test_gaussianimage_cholesky_trains_and_makes_a_file(small_photo):
    """GI-Cholesky: CholeskyParams trained by the same loop (the factor at the scales' rate),
    in float, then converted and quantized into a file whose decode is what was reported."""
    from smartsplat_jax.pipeline import compress_image
    from smartsplat_jax.train import loop

    path, img = small_photo
    h, w = img.shape[:2]
    n = num_gaussians(h, w, 20)
    p0, _ = initialize("gaussianimage-cholesky", jax.random.PRNGKey(0), img, n)
    assert isinstance(p0, P.CholeskyParams) and p0.cholesky.shape == (n, 3)
    l11, l21, l22 = np.asarray(p0.cholesky).T
    assert l11.min() >= 0.5 and l11.max() <= 1.5 and l21.min() >= 0 and l21.max() <= 1
    cfg = config_for_method("gaussianimage-cholesky", steps=20, chunk_steps=10, eval_every=0,
                            checkpoint_every=0, backend="xla", lr_scales=0.0)
    frozen, _ = fit(img, p0, cfg, progress=False)
    np.testing.assert_array_equal(frozen.cholesky, p0.cholesky)  # lr_scales 0 freezes L
    assert not np.array_equal(frozen.means, p0.means)
    with pytest.raises(ValueError, match="needs GaussianParams.*to_gaussian_params"):
        loop.fit(img, p0, cfg, progress=False,
                 quantizer=BudgetQuantizer(h, w, byte_budget(h, w, 20), backend="xla"))
    data, r = compress_image(path, cr=20, method="gaussianimage-cholesky", steps=200,
                             backend="xla", progress=False, chunk_steps=10, eval_every=0)
    assert r["num_gaussians"] == n and len(data) <= byte_budget(h, w, 20)
    init_psnr = metrics.psnr(render(p0, h, w), img)
    assert r["psnr_float"] > init_psnr + 1.0, (r["psnr_float"], init_psnr)
    decoded, dh, dw = codec.decode(data)
    assert metrics.psnr(render(decoded, dh, dw), img) == pytest.approx(r["psnr"], abs=1e-4)


def test_short_fit_beats_init(small_photo):
    _, img = small_photo
    h, w = img.shape[:2]
    n = num_gaussians(h, w, 10)
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, n)
    cfg = config_for_method("smartsplat", steps=150, chunk_steps=25, eval_every=25)
    p1, hist = fit(img, p0, cfg, progress=False)
    psnr0 = metrics.psnr(render(p0, h, w), img)
    evals = [e["psnr"] for e in hist["eval"]]
    assert evals[-1] > psnr0 + 8.0, (psnr0, evals)
    assert sum(b > a for a, b in zip(evals, evals[1:])) >= len(evals) - 2  # mostly increasing
    # Opacity is frozen.
    np.testing.assert_array_equal(p1.opacity, p0.opacity)


@pytest.mark.slow  # ~20 s; test_train_robust's truncated-checkpoint test resumes bitwise too
def test_resume_equals_uninterrupted(small_photo, tmp_path):
    _, img = small_photo
    h, w = img.shape[:2]
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(1), img, num_gaussians(h, w, 30))
    base = dict(chunk_steps=10, eval_every=0, checkpoint_every=20)
    full, _ = fit(img, p0, config_for_method("smartsplat", steps=60, **base), progress=False)
    # A run stopped after its step-40 checkpoint, then resumed to 60.
    fit(img, p0, config_for_method("smartsplat", steps=40, **base), workdir=tmp_path, progress=False)
    resumed, hist = fit(img, p0, config_for_method("smartsplat", steps=60, **base),
                        workdir=tmp_path, resume=True, progress=False)
    assert hist["resumed_from"] == 40
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _qat_setup(small_photo, steps=60, qat=20, cr=12):
    _, img = small_photo
    h, w = img.shape[:2]
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(2), img, num_gaussians(h, w, cr))
    cfg = config_for_method("smartsplat", steps=steps, qat_steps=qat, chunk_steps=10,
                            eval_every=0, checkpoint_every=20, backend="xla")
    return img, h, w, p0, cfg, BudgetQuantizer(h, w, byte_budget(h, w, cr), backend="xla")


def test_quantization_aware_training_ends_on_the_files_render(small_photo):
    """The last phase trains through the quantizer in the same compiled chunks: training ends
    with parameters on the grid, and the render it reports is the decoded file's."""
    img, h, w, p0, cfg, quantizer = _qat_setup(small_photo)
    before = _run_chunk._cache_size()
    params, hist = fit(img, p0, cfg, progress=False, quantizer=quantizer)
    assert _run_chunk._cache_size() == before + 1  # float and quantized steps: one compile
    assert hist["qat_start"] == 40 and hist["quant"] is not None
    spec = codec.QuantSpec(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in hist["quant"].items()})
    g = codec.grid(spec)
    # On the grid: quantizing again changes nothing (up to float rounding of the conversions
    # between pixels and normalized units inside and outside the compiled step).
    on_grid = codec.fake_quantize(params, g, h, w)
    for a, b in zip(jax.tree_util.tree_leaves(on_grid), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    data, info = encode_trained(params, hist, h, w, byte_budget(h, w, 12))
    assert info["quantization_aware"] and info["fits_budget"]
    assert codec.read_info(data).spec == spec  # the grid training ended on
    assert info["budget_used"] >= 0.97
    decoded = codec.decode(data)[0]
    trained = render(params, h, w, backend="xla")
    np.testing.assert_allclose(render(decoded, h, w, backend="xla"), trained, atol=1e-5)
    assert hist["eval"][-1]["psnr"] == pytest.approx(metrics.psnr(trained, img), abs=1e-9)
    lo, hi = cfg.color_bounds
    assert float(params.colors.min()) >= lo and float(params.colors.max()) <= hi


def test_quantization_aware_phase_beats_rounding():
    """In the converged regime (an image that N Gaussians represent exactly, training started
    at the optimum): rounding the optimum to a coarse grid loses; the quantization-aware phase
    (positions, then scales and angles, snapped while the rest re-fits) recovers a good part."""
    rng = np.random.default_rng(7)
    h, w, n = 48, 64, 40
    xy = np.stack([rng.uniform(4, w - 4, n), rng.uniform(4, h - 4, n)], 1)
    true = P.GaussianParams.create(
        means=P.pixel_to_normalized(jnp.asarray(xy), h, w), scales=rng.uniform(2.0, 6.0, (n, 2)),
        rotation=rng.normal(0, 1, (n, 1)), colors=rng.uniform(0.05, 0.35, (n, 3)))
    img = np.asarray(render(true, h, w, backend="xla"))
    spec = codec.choose_spec(true, h, w, pos_exp=-12, scale_exp=-24, color_exp=-48)
    cfg = config_for_method("smartsplat", steps=60, qat_steps=40, chunk_steps=20, eval_every=0,
                            checkpoint_every=0, backend="xla")
    floated, _ = fit(img, true, cfg, progress=False)
    rounded = codec.decode(codec.encode(floated, h, w, spec=spec))[0]
    aware, _ = fit(img, true, cfg, progress=False, quantizer=spec)
    decoded = codec.decode(codec.encode(aware, h, w, spec=spec))[0]
    psnr = {"float": metrics.psnr(render(floated, h, w, backend="xla"), img),
            "rounded": metrics.psnr(render(rounded, h, w, backend="xla"), img),
            "aware": metrics.psnr(render(decoded, h, w, backend="xla"), img)}
    # Float: Adam's first step leaves the optimum by about its step size whatever the
    # gradient (36.9 dB after one step), and 60 steps come back to 67.0 dB on jax 0.10 and
    # 59.1 dB on jax 0.12 (so near the optimum the gradient is rounding noise, and another
    # XLA rounds differently).
    assert psnr["float"] > 55 and psnr["rounded"] < 45, psnr
    assert psnr["aware"] > psnr["rounded"] + 2.0, psnr  # measured: +2.9 dB


def test_quantization_aware_stages_snap_a_random_share_at_a_time(small_photo, tmp_path,
                                                                monkeypatch):
    """With qat_stages=2, each group reaches the grid in two halves of the Gaussians, a fixed
    random split: between the stages, one half is on the grid and frozen, the other free."""
    from smartsplat_jax.train import checkpoint as ckpt

    monkeypatch.setattr(ckpt, "_KEEP", 100)  # keep every checkpoint of the run
    img, h, w, p0, cfg, quantizer = _qat_setup(small_photo)
    cfg = dataclasses.replace(cfg, qat_steps=40, qat_stages=2, checkpoint_every=5)
    sched = qat_schedule(cfg, True, p0.num)
    pos, geo = np.asarray(sched.positions)[:, 0], np.asarray(sched.geometry)[:, 0]
    assert sorted(set(pos)) == [20, 30] and sorted(set(geo)) == [40, 50]
    assert abs(int(np.sum(pos == 20)) - p0.num / 2) <= 1
    np.testing.assert_array_equal(pos - 20, geo - 40)  # one split for both groups
    again = qat_schedule(cfg, True, p0.num)  # the same split every time: resumable
    np.testing.assert_array_equal(pos, np.asarray(again.positions)[:, 0])
    assert np.corrcoef(pos, np.arange(p0.num))[0, 1] < 0.3  # not by row (init order)
    params, hist = fit(img, p0, cfg, workdir=tmp_path, progress=False, quantizer=quantizer)
    compiled = _run_chunk._cache_size()
    g = codec.grid(codec.QuantSpec.from_record(hist["quant"]))
    template = (p0, make_optimizer(cfg).init(p0))

    def on_grid(step):
        state = ckpt.load_checkpoint(tmp_path / "checkpoints" / f"ckpt_{step:09d}.npz",
                                     template)[0][0]
        q = codec.fake_quantize(state, g, h, w)
        same = lambda a, b: np.all(np.isclose(a, b, rtol=1e-6, atol=1e-6), 1)  # noqa: E731
        return same(q.means, state.means), same(q.scales, state.scales)

    means, scales = on_grid(25)  # positions: the first half snapped, the second free
    assert means[pos == 20].all() and not means[pos == 30].any()
    assert not scales.any()
    means, scales = on_grid(45)  # every position snapped; scales: the first half
    assert means.all() and scales[geo == 40].all() and not scales[geo == 50].any()
    means, scales = on_grid(60)
    assert means.all() and scales.all()
    # Resumable: inside the phase with the same stages only (to the same parameters), before
    # it with any.
    def keep_until(step):
        for path in (tmp_path / "checkpoints").glob("ckpt_*.npz"):
            if int(path.stem.split("_")[1]) > step:
                path.unlink()

    keep_until(45)
    with pytest.raises(ValueError, match="snaps in 2 stage"):
        fit(img, p0, dataclasses.replace(cfg, qat_stages=1), workdir=tmp_path, progress=False,
            quantizer=quantizer)
    resumed, again = fit(img, p0, cfg, workdir=tmp_path, progress=False, quantizer=quantizer)
    assert again["resumed_from"] == 45 and again["qat_stages"] == 2
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    keep_until(15)
    _, one = fit(img, p0, dataclasses.replace(cfg, qat_stages=1), workdir=tmp_path,
                 progress=False, quantizer=quantizer)
    assert one["resumed_from"] == 15 and one["qat_stages"] == 1
    assert _run_chunk._cache_size() == compiled  # one compiled step for any stages


def test_resume_inside_the_quantization_aware_phase(small_photo, tmp_path):
    """A run killed inside the phase resumes with the checkpoint's quantizer (no new plan) to
    the same parameters as the uninterrupted run."""
    img, h, w, p0, cfg, quantizer = _qat_setup(small_photo)
    cfg = dataclasses.replace(cfg, checkpoint_every=10)
    full, full_hist = fit(img, p0, cfg, workdir=tmp_path, progress=False, quantizer=quantizer)
    (tmp_path / "checkpoints" / "ckpt_000000060.npz").unlink()  # killed after step 50
    plans = []

    class Counting(BudgetQuantizer):
        def plan(self, p):
            plans.append(1)
            return super().plan(p)

    resumed, hist = fit(img, p0, cfg, workdir=tmp_path, resume=True, progress=False,
                        quantizer=Counting(h, w, quantizer.budget, backend="xla"))
    assert hist["resumed_from"] == 50 and plans == []
    assert hist["quant"] == full_hist["quant"]
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_qat_and_colour_bound_fields_are_checked():
    with pytest.raises(ValueError, match="qat_steps=-3"):
        config_for_method("smartsplat", qat_steps=-3)
    with pytest.raises(ValueError, match="color_bounds"):
        config_for_method("smartsplat", color_bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="color_bounds"):
        config_for_method("smartsplat", color_bounds=(-100.0, 1.0))
    with pytest.raises(ValueError, match="qat_lr_scale"):
        config_for_method("smartsplat", qat_lr_scale=0.0)
    assert config_for_method("smartsplat", steps=1000).qat_steps_used == 20
    assert config_for_method("smartsplat", steps=20000).qat_steps_used == 400
    assert config_for_method("smartsplat", steps=10).qat_steps_used == 5
    assert config_for_method("smartsplat", steps=10, qat_steps=30).qat_steps_used == 10
    assert default_qat_steps(50_000) == 1000 and default_qat_steps(10**6) == 1000
    with pytest.raises(ValueError, match="qat_stages=0"):
        config_for_method("smartsplat", qat_stages=0)
    # One snapping stage per 50 steps of a group's half of the phase, 1 to 4.
    stages = {s: config_for_method("smartsplat", steps=s).qat_stages_used
              for s in (1000, 10_000, 20_000, 50_000)}
    assert stages == {1000: 1, 10_000: 2, 20_000: 4, 50_000: 4}
    assert config_for_method("smartsplat", steps=60, qat_steps=6, qat_stages=5).qat_stages_used == 3


def _run(args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_fit_launcher_end_to_end(small_photo, tmp_path):
    path, img = small_photo
    work = tmp_path / "run"
    out = _run(["experiments.fit", f"--image={path}", "--cr=15", "--steps=20", f"--workdir={work}",
                "--config.chunk_steps=10", "--config.eval_every=10", "--config.loss=l2"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PSNR" in out.stdout
    assert "real CR" in out.stdout
    for name in ("image.ssplat", "recon.png", "params.npz", "metrics.json", "curve.png",
                 "history.json", "init_weights.png", "init_points.png", "init_render.png"):
        assert (work / name).is_file(), name
    m = json.loads((work / "metrics.json").read_text())
    for key in ("psnr", "ssim", "ms_ssim", "num_gaussians", "steps", "train_seconds", "height",
                "width", "cr", "method", "backend", "device", "jax_version", "psnr_float",
                "file_bytes", "actual_cr", "qat_steps", "decode_seconds"):
        assert key in m, key
    params, h, w = load_params(work / "params.npz")
    assert (h, w) == img.shape[:2] and m["num_gaussians"] == params.means.shape[0]
    # The saved params lie on the file's grid: they render as the decoded file does.
    assert m["psnr"] == pytest.approx(metrics.psnr(render(params, h, w), img), abs=1e-4)
    data = (work / "image.ssplat").read_bytes()
    assert m["file_bytes"] == len(data) <= 3 * h * w / 15 and m["fits_budget"]
    assert m["budget_used"] >= 0.97 and m["psnr_float"] > 10
    assert m["actual_cr"] == pytest.approx(3 * h * w / len(data))
    assert m["qat_steps"] == 10  # the default: 2 % of the steps, at least 20, at most half
    assert m["relocate_every"] == 0 and m["relocated"] == 0  # 20 steps: too short to relocate
    # The front-end's position rate, 0.3 px per step along the longer side, was trained with.
    assert m["lr_means"] == pytest.approx(0.6 / max(h, w), rel=1e-12)
    assert m["lr_scales"] == 0.1  # and the scales 0.1 px per step
    assert "px along the longer side" in out.stdout and "scales' rate 0.1 px" in out.stdout
    assert m["loss"] == "l2" and "loss l2" in out.stdout  # the config's loss was trained
    decoded, dh, dw = codec.decode(data)
    # The file holds the Gaussians the render draws (codec.prune), and says how many.
    assert (dh, dw) == (h, w) and decoded.num == m["file_gaussians"] <= params.num
    assert m["bytes_per_gaussian"] == pytest.approx(len(data) / decoded.num)
    rendered = render(decoded, h, w)  # what the user gets
    assert m["psnr"] == pytest.approx(metrics.psnr(rendered, img), abs=1e-6)
    assert m["ssim"] == pytest.approx(metrics.ssim(rendered, img), abs=1e-6)
    assert m["ms_ssim"] is None and "160" in m["ms_ssim_note"]  # 96 px: too small for MS-SSIM
    recon = load_image(work / "recon.png")
    assert metrics.psnr(recon, np.asarray(rendered)) > 45  # the PNG is the render, 8-bit


def test_fit_launcher_resolves_the_front_end_training():
    # The default config relocates SmartSplat runs (train.default_relocate_every), moves
    # their positions 0.3 px per step (train.default_lr_means) and their scales 0.1 px per
    # step (train.default_lr_scales); the paper configuration, the baselines and explicit
    # values are kept as they are.
    from experiments.common import training_overrides
    from experiments.configs import default, paper

    c = default.get_config()
    assert training_overrides(c, 512, 768)["relocate_every"] == 250  # 1,000 steps
    assert training_overrides(c, 512, 768)["lr_means"] == pytest.approx(0.6 / 768)
    assert training_overrides(c, 8000, 6000)["lr_means"] == 1e-4  # never below the paper's
    assert training_overrides(c, 512, 768)["lr_scales"] == 0.1
    c.steps = 20_000
    assert training_overrides(c, 64, 64)["relocate_every"] == 500
    c.method = "gaussianimage-rs"
    assert training_overrides(c, 64, 64)["relocate_every"] == 0
    assert training_overrides(c, 64, 64)["lr_means"] == 1e-3  # GaussianImage's own
    assert training_overrides(c, 64, 64)["lr_scales"] == 1e-3
    c.method, c.relocate_every, c.lr_means, c.lr_scales = "smartsplat", 0, 5e-4, 0.07
    assert training_overrides(c, 64, 64)["relocate_every"] == 0
    assert "loss" not in training_overrides(c, 64, 64)  # None: the method's own
    c.relocate_every, c.loss = 125, "l2"
    assert training_overrides(c, 64, 64) == {"relocate_every": 125, "lr_means": 5e-4,
                                             "loss": "l2",
                                             "lr_scales": 0.07, "chunk_steps": 100,
                                             "eval_every": 250, "checkpoint_every": 500,
                                             "max_retries": 3}
    p = training_overrides(paper.get_config(), 64, 64)
    assert p["relocate_every"] == 0 and p["lr_means"] == 1e-4 and p["lr_scales"] == 5e-2


def test_front_end_rates_by_hand():
    from smartsplat_jax.train import (METHODS, config_for_method, default_lr_means,
                                      default_lr_scales, user_training)

    # SmartSplat: 0.3 px per step along the longer side (x_pix = 0.5 W (x + 1)), never below
    # the paper's 1e-4 normalized units.
    assert default_lr_means("smartsplat", 256, 256) == pytest.approx(2.34375e-3, rel=1e-12)
    assert default_lr_means("smartsplat", 512, 768) == pytest.approx(7.8125e-4, rel=1e-12)
    assert default_lr_means("smartsplat", 768, 512) == default_lr_means("smartsplat", 512, 768)
    assert 0.5 * 1024 * default_lr_means("smartsplat", 683, 1024) == pytest.approx(0.3)
    assert default_lr_means("smartsplat", 4000, 6000) == pytest.approx(1e-4, rel=1e-12)
    assert default_lr_means("smartsplat", 16384, 16384) == 1e-4
    # The baselines (and random, a comparison) keep their own rates.
    for m in METHODS:
        if m != "smartsplat":
            assert default_lr_means(m, 256, 256) == config_for_method(m).lr_means
    # The scales: 0.1 px per step for SmartSplat, twice the paper's 5e-2; the others' own.
    assert default_lr_scales("smartsplat") == 0.1 == 2 * config_for_method("smartsplat").lr_scales
    for m in METHODS:
        if m != "smartsplat":
            assert default_lr_scales(m) == config_for_method(m).lr_scales
    assert user_training("smartsplat", 1000, 256, 256) == {
        "relocate_every": 250, "lr_means": default_lr_means("smartsplat", 256, 256),
        "lr_scales": 0.1}


@pytest.mark.parametrize("flag,needle", [("--cr=-3", "cr=-3"), ("--steps=0", "steps=0"),
                                         ("--method=magic", "method='magic'"),
                                         ("--backend=cuda", "backend='cuda'"),
                                         ("--image=/no/such.png", "no such file")])
def test_fit_launcher_bad_flags(small_photo, tmp_path, flag, needle):
    path, _ = small_photo
    args = ["experiments.fit", f"--image={path}", f"--workdir={tmp_path / 'w'}", "--steps=5"]
    out = _run(args + [flag])
    assert out.returncode != 0
    assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_fit_launcher_unwritable_workdir(small_photo, tmp_path):
    path, _ = small_photo
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = _run(["experiments.fit", f"--image={path}", f"--workdir={blocker / 'sub'}", "--steps=5"])
    assert out.returncode != 0 and "not writable" in out.stderr and "Traceback" not in out.stderr


def test_workdir_check_is_safe_for_processes_sharing_the_folder(tmp_path):
    """Several launchers may start on one output folder at once (the processes of a
    distributed benchmark do): each checks it is writable with a probe of its own, so none
    removes another's probe under it, and a file left where a fixed probe name would go does
    not make the folder look unwritable."""
    import threading

    from smartsplat_jax.pipeline import check_workdir

    out = tmp_path / "out"
    errors, start = [], threading.Barrier(8)

    def check():
        start.wait()
        for _ in range(300):
            try:
                check_workdir(out)
            except OSError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert list(out.iterdir()) == []  # no probe left behind
    (out / ".write_test").mkdir()  # e.g. left by another tool
    assert check_workdir(out) == out
    assert sorted(p.name for p in out.iterdir()) == [".write_test"]


def test_benchmark_launcher_resumes(small_photo, tmp_path):
    path, _ = small_photo
    args = ["experiments.benchmark", f"--images={path}", "--crs=20", "--methods=smartsplat,random",
            "--steps=10", f"--out_dir={tmp_path}", "--classic=jpeg,webp"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    methods = {m["method"] for m in data["means"]}
    assert len(data["cells"]) == 4
    assert methods == {"smartsplat", "random", "jpeg@equal-bytes", "webp@equal-bytes"}
    ours = next(r for r in data["cells"] if r["method"] == "smartsplat")
    assert ours["quant_drop"] == pytest.approx(ours["psnr_float"] - ours["psnr"])
    # Each cell ran in its own process: its peak memory is measured, at least the image's.
    assert 0.05 < ours["peak_rss_gib"] < 8 and ours["device_peak_gib"] is None
    for r in data["cells"]:
        if r["method"].endswith("equal-bytes"):  # at most the .ssplat file's size
            assert r["file_bytes"] is None or r["file_bytes"] <= ours["file_bytes"]
            assert r["file_bytes"] is None or 5 < r["psnr"] < 60
    assert (tmp_path / "results.md").is_file() and (tmp_path / "results.csv").is_file()
    again = _run(args)
    assert again.returncode == 0 and again.stdout.count("skip (done)") == 2
    # Relocation: a cell and a row of its own beside the paper's (not a skip), and a clear
    # refusal for a method whose Gaussians it cannot move.
    relocating = _run(args[:2] + ["--crs=20", "--methods=smartsplat", "--steps=10",
                                  f"--out_dir={tmp_path}", "--relocate_every=5"])
    assert relocating.returncode == 0, relocating.stderr[-3000:]
    assert "skip (done)" not in relocating.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    ours = sorted((r["relocate_every"], r["file_bytes"] > 0) for r in data["cells"]
                  if r["method"] == "smartsplat")
    assert ours == [(0, True), (5, True)]
    assert (tmp_path / "cells" / f"{Path(path).stem}_cr20_smartsplat_10_r5").is_dir()
    assert {(m["method"], m["relocate_every"]) for m in data["means"]} >= {
        ("smartsplat", 0), ("smartsplat", 5), ("random", 0)}
    refused = _run(args[:2] + ["--methods=smartsplat,lig", "--relocate_every=5",
                               f"--out_dir={tmp_path}"])
    assert refused.returncode != 0 and "--relocate_every=5" in refused.stderr
    assert "not lig" in refused.stderr


def test_benchmark_over_two_processes_merges_one_table(small_photo, tmp_path):
    """Two local processes on JAX's distributed runtime split the (image, CR) groups and
    process 0 writes the merged table; a later single-process run finds every cell done."""
    import socket

    path, img = small_photo
    images = tmp_path / "images"
    images.mkdir()
    for name, (r, c) in {"a": (0, 0), "b": (32, 48)}.items():
        save_image(images / f"{name}.png", img[r:r + 48, c:c + 64])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_dir = tmp_path / "out"
    args = ["-m", "experiments.benchmark", f"--images={images}", "--crs=20",
            "--methods=random", "--steps=5", f"--out_dir={out_dir}",
            f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, *args, f"--process_id={i}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):  # on failure, both processes' logs
        assert p.returncode == 0, "\n".join(f"process {i}: {e[-2000:]}"
                                             for i, (_, e) in enumerate(outs))
    assert "process 0 of 2: 1 of 2" in outs[0][0] and "process 1 of 2: 1 of 2" in outs[1][0]
    data = json.loads((out_dir / "results.json").read_text())
    assert sorted(os.path.basename(r["image"]) for r in data["cells"]) == ["a.png", "b.png"]
    assert len(list((out_dir / "parts").glob("results_*.json"))) == 2
    again = _run(["experiments.benchmark", f"--images={images}", "--crs=20", "--methods=random",
                  "--steps=5", f"--out_dir={out_dir}"])
    assert again.returncode == 0 and again.stdout.count("skip (done)") == 2, again.stderr[-2000:]
    bad = _run(["experiments.benchmark", f"--images={images}", "--num_processes=2",
                f"--out_dir={out_dir}"])
    assert bad.returncode != 0 and "--coordinator" in bad.stderr


def test_custom_loss_and_optimizer_reproduce_the_built_in_ones(small_photo):
    # The config's L2 loss and its optimizer, passed in as a custom loss and optax transform,
    # train exactly the same parameters (same arithmetic through the other code path).
    _, img = small_photo
    img = img[:32, :48]
    h, w = img.shape[:2]
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, num_gaussians(h, w, 10))
    cfg = config_for_method("smartsplat", steps=20, chunk_steps=10, eval_every=0, loss="l2")
    built_in, _ = fit(img, p0, cfg, progress=False)
    custom, hist = fit(img, p0, cfg, progress=False, optimizer=make_optimizer(cfg),
                       loss_fn=lambda r, t: jnp.mean(jnp.square(r - t)))
    for a, b in zip(jax.tree_util.tree_leaves(built_in), jax.tree_util.tree_leaves(custom)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(hist["seconds"]) == len(hist["step"]) == 2
    # A zero-rate optimizer moves nothing: the custom transform is what updates the params.
    frozen, _ = fit(img, p0, cfg, progress=False, optimizer=optax.sgd(0.0))
    for a, b in zip(jax.tree_util.tree_leaves(frozen), jax.tree_util.tree_leaves(p0)):
        np.testing.assert_array_equal(a, b)


def test_custom_loss_and_optimizer_are_checked(small_photo):
    _, img = small_photo
    img = img[:16, :16]
    p0, _ = initialize("smartsplat", jax.random.PRNGKey(0), img, 8)
    cfg = config_for_method("smartsplat", steps=2)
    with pytest.raises(ValueError, match="loss_fn=.*must return a float scalar.*16, 16"):
        fit(img, p0, cfg, progress=False, loss_fn=lambda r, t: jnp.abs(r - t).mean(-1))
    with pytest.raises(ValueError, match="loss_fn=.*fails on"):
        fit(img, p0, cfg, progress=False, loss_fn=lambda r: r.sum())
    with pytest.raises(TypeError, match="loss_fn=3 must be a function"):
        fit(img, p0, cfg, progress=False, loss_fn=3)
    with pytest.raises(TypeError, match="optimizer=.*optax GradientTransformation"):
        fit(img, p0, cfg, progress=False, optimizer="adam")


def test_progress_bar_redraws_in_a_notebook_cell():
    from smartsplat_jax.train.progress import Progress

    class CellStream(io.StringIO):  # what a Jupyter/Colab cell's stdout looks like
        pass

    CellStream.__module__ = "ipykernel.iostream"
    out = CellStream()
    bar = Progress(100, stream=out, log_seconds=1e9)
    bar.update(50, 0.5, 20.0)
    bar.update(100, 0.25, 25.0)
    text = out.getvalue()
    assert text.startswith("\r[############------------] step 50/100")
    assert "\r[########################] step 100/100" in text and text.endswith("\n")
    assert "\033" not in text  # no terminal escapes in a notebook
    plain = io.StringIO()  # a log file: lines, not a bar
    Progress(100, stream=plain, log_seconds=1e9).update(50, 0.5, 20.0)
    assert plain.getvalue().startswith("step 50/100")
