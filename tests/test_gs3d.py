"""The 3DGS baseline (train.gs3d): its init and camera by hand, blended sets through the
renderer, the codec (version 3: opacities and depth ranks) and the pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartsplat_jax import DEMO_IMAGE, codec, load_image, metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec import format as F
from smartsplat_jax.pipeline import compress_image, decompress, load_params, save_params
from smartsplat_jax.render import render
from smartsplat_jax.render.blend import render_blend, render_blend_reference
from smartsplat_jax.train import config_for_method, fit, initialize
from smartsplat_jax.train import gs3d as G

from helpers import header_spans, recrc, scene


def _brute_knn(pts, k=3):
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, 1)[:, :min(k, len(pts) - 1)].mean(1)


@pytest.mark.parametrize("n,dim", [(2, 3), (4, 3), (50, 3), (700, 3), (500, 2)])
def test_knn_mean_distance_is_exact(n, dim):
    rng = np.random.default_rng(n)
    pts = rng.uniform(-1, 1, (n, dim))
    if n > 100:  # clusters and duplicates: cells far from uniform occupancy
        pts[: n // 4] = rng.normal(0.3, 0.01, (n // 4, dim))
        pts[-3:] = pts[-4]
    np.testing.assert_allclose(G.knn_mean_distance(pts, chunk=128), _brute_knn(pts),
                               rtol=1e-12, atol=1e-15)
    assert G.knn_mean_distance(pts[:1]).tolist() == [0.0]


def test_camera_projection_by_hand():
    # One Gaussian at (X, Y, Z) = (0.5, -0.25, 0), s = 0.1, on a 48 x 64 image: depth 8,
    # f = 32 px, u = 1/16, v = -1/32; Sigma = (f s / 8)^2 [[1 + u^2, uv], [uv, 1 + v^2]]
    # + 0.3 I.
    h, w = 48, 64
    p = G.project_init(np.asarray([[0.5, -0.25, 0.0]]), np.asarray([0.1]),
                       np.asarray([[0.2, 0.4, 0.6]]), 0.1, h, w)
    u, v, g = 1 / 16, -1 / 32, (32 * 0.1 / 8) ** 2
    np.testing.assert_allclose(p.means[0], [u * 2 * 32 / w, v * 2 * 32 / h], rtol=1e-6)
    want = np.asarray([[g * (1 + u * u) + 0.3, g * u * v], [g * u * v, g * (1 + v * v) + 0.3]])
    np.testing.assert_allclose(P.covariance(p)[0], want, rtol=1e-5, atol=1e-7)  # float32
    assert p.blend and float(p.opacity[0, 0]) == pytest.approx(0.1)
    # Rows come front to back: sorted by depth Z + 8.
    xyz = np.asarray([[0.0, 0.0, 0.5], [0.1, 0.0, -0.9], [0.0, 0.2, 0.0]])
    q = G.project_init(xyz, np.full(3, 0.05), np.eye(3), 0.5, h, w)
    np.testing.assert_allclose(q.colors, np.eye(3)[[1, 2, 0]])


def test_init_is_the_authors_clustered_start():
    img = load_image(DEMO_IMAGE)[200:248, 300:364]
    p, info = initialize("3dgs", jax.random.PRNGKey(3), img, 300)
    assert p.blend and p.num == 300
    assert float(jnp.max(jnp.abs(p.means[:, 0]))) <= 1 / 7 + 1e-6  # |X / Z| <= 1 / 7
    assert float(jnp.max(jnp.abs(p.means[:, 1]))) <= (64 / 48) / 7 + 1e-6
    np.testing.assert_allclose(p.opacity, 0.1)
    assert float(p.colors.min()) >= 0.5 and float(p.colors.max()) <= 0.5 + G.SH_C0
    assert info["focal_px"] == 32.0
    cfg = config_for_method("3dgs")
    assert (cfg.loss, cfg.lambda_l1, cfg.optimizer, cfg.lr_means, cfg.lr_opacity,
            cfg.lr_halve_every) == ("smartsplat", 0.7, "adan", 1e-3 / 8, 1e-3, 20_000)


def _blended(seed=0, n=40, h=20, w=24):
    p = scene(seed, n, h, w, extras=False)
    return p.replace(opacity=jnp.clip(p.opacity, 0.05, 0.95), blend=True)


def test_render_dispatches_blended_sets_to_the_blending_rasterizer():
    p = _blended()
    ref = render_blend_reference(p, 20, 24)
    for backend in ("xla", "pallas", "reference", "auto"):
        np.testing.assert_allclose(render(p, 20, 24, backend=backend), ref, atol=2e-6,
                                   err_msg=backend)
    # The same rows added instead: a different picture.
    assert float(jnp.abs(render(p.replace(blend=False), 20, 24, backend="xla") - ref).max()) > 0.05
    # The flag survives jit, grad and tree maps (it is static metadata).
    g = jax.grad(lambda q: jnp.sum(render(q, 20, 24, backend="xla")))(p)
    assert g.blend and jax.tree_util.tree_map(lambda a: a * 2, p).blend
    np.testing.assert_allclose(g.colors, jax.grad(
        lambda q: jnp.sum(render_blend(q, 20, 24)))(p).colors, rtol=1e-5, atol=1e-6)


def test_blended_file_keeps_the_depth_order_and_renders_as_trained():
    h, w = 20, 24
    p = _blended(1, 60, h, w)
    data = codec.encode(p, h, w)
    info = codec.read_info(data)
    assert data[4] == 3 and info.version == 3 and info.blend and info.spec.opacity_levels > 1
    q, hh, ww = codec.decode(data)
    assert q.blend and (hh, ww) == (h, w)
    fq = codec.fake_quantize(p, codec.grid(info.spec), h, w)
    # Row for row, the decoded Gaussians are the quantized ones in the same (depth) order.
    np.testing.assert_allclose(q.means, fq.means, atol=1e-6)
    np.testing.assert_allclose(q.colors, fq.colors, atol=1e-6)
    np.testing.assert_allclose(q.opacity, fq.opacity, atol=1e-7)
    np.testing.assert_allclose(P.covariance(q), P.covariance(fq), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(render(q, h, w, backend="xla"), render(fq, h, w, backend="xla"),
                               atol=1e-6)
    # The order is what the file keeps: reversed rows give another file and picture.
    rev = jax.tree_util.tree_map(lambda a: a[::-1], p)
    q2, _, _ = codec.decode(codec.encode(rev, h, w))
    np.testing.assert_allclose(q2.colors, fq.colors[::-1], atol=1e-6)
    # An additive set of the same rows is still a version 2 file, without ranks.
    add = codec.encode(p.replace(blend=False), h, w)
    assert add[4] == 2 and not codec.read_info(add).blend and len(add) < len(data)


def test_crafted_blended_files_are_refused_clearly(monkeypatch):
    h, w = 20, 24
    p = _blended(2, 60, h, w)
    data = codec.encode(p, h, w)
    flags_at = header_spans(data, 4)[3]
    assert data[flags_at[0]] == 3  # opacity stored, blended
    # Version 3 without the blend flag, version 2 with it.
    for version, flags, msg in ((3, 1, "flags=1 must be 2 or 3 in version 3"),
                                (2, 3, "flags=3 must be 0 or 1 in version 2")):
        bad = bytearray(data[:-4])
        bad[4], bad[flags_at[0]] = version, flags
        with pytest.raises(codec.CodecError, match=msg):
            codec.decode(recrc(bytes(bad) + bytes(4)))
    # Ranks that are not a permutation: the rank stream (the only uniform stream over N
    # values here) written with its first rank twice.
    real = F.entropy.Encoder.uniform

    def rank_twice(self, symbols, sizes):
        symbols = np.array(symbols)
        if symbols.size == p.num and np.all(np.asarray(sizes) == p.num):
            symbols[1] = symbols[0]
        return real(self, symbols, sizes)

    monkeypatch.setattr(F.entropy.Encoder, "uniform", rank_twice)
    crafted = codec.encode(p, h, w)
    assert crafted != data
    with pytest.raises(codec.CodecError, match="not a permutation"):
        codec.decode(crafted)


def test_rank_coding_of_huge_sets_splits_high_and_low_parts():
    assert F._rank_parts(1000) == (1000, 0)
    assert F._rank_parts((1 << 24) - 1) == ((1 << 24) - 1, 0)
    size, low = F._rank_parts(1 << 25)
    assert low == 12 and size << low == 1 << 25


def test_fit_and_pipeline_train_blended_gaussians_end_to_end(tmp_path):
    img = load_image(DEMO_IMAGE)[200:248, 300:364]
    path = tmp_path / "crop.png"
    from smartsplat_jax import io as sio
    sio.save_image(path, img)
    p0, _ = initialize("3dgs", jax.random.PRNGKey(0), img, 120)
    cfg = config_for_method("3dgs", steps=60, backend="xla", eval_every=0, chunk_steps=30,
                            lr_means=0.01, lr_scales=0.05, lr_colors=0.01, lr_opacity=0.01)
    p, hist = fit(img, p0, cfg, progress=False)
    assert p.blend and float(p.opacity.min()) >= 0.0 and float(p.opacity.max()) <= 1.0
    before = metrics.psnr(render(p0, 48, 64, backend="xla"), img)
    assert metrics.psnr(render(p, 48, 64, backend="xla"), img) > before + 1.0
    # The pipeline: compress, then decode the bytes as a user does.
    data, result = compress_image(path, cr=10, method="3dgs", steps=40, backend="xla",
                                  progress=False, lr_means=0.01, lr_opacity=0.01)
    info = codec.read_info(data)
    assert info.blend and info.version == 3 and len(data) <= 3 * 48 * 64 // 10
    decoded = decompress(data, backend="xla")
    assert metrics.psnr(decoded, img) == pytest.approx(result["psnr"], abs=1e-4)
    # params.npz keeps the compositing.
    save_params(tmp_path / "p.npz", p, 48, 64)
    q, _, _ = load_params(tmp_path / "p.npz")
    assert q.blend


def test_blended_sets_refuse_a_device_mesh():
    img = np.zeros((16, 16, 3), np.float32)
    p0, _ = initialize("3dgs", jax.random.PRNGKey(0), img, 20)
    with pytest.raises(ValueError, match="one device only"):
        fit(img, p0, config_for_method("3dgs", steps=2, devices=2), progress=False)


def test_blended_sets_step_scales_and_opacities_as_3dgs_parameterises_them():
    # scale_by_group_rates: a blended set's scale step is rate * |s| * direction and its
    # opacity step rate * o (1 - o) * direction (3DGS's log-space scales and logit-space
    # opacities, to first order); an additive set's are rate * direction.
    from smartsplat_jax.train.optim import hyperparams, scale_by_group_rates

    cfg = config_for_method("3dgs")
    p = _blended(3, 5)
    ones = jax.tree_util.tree_map(jnp.ones_like, p)
    tx = scale_by_group_rates(hyperparams(cfg))
    step, _ = tx.update(ones, tx.init(p), p)
    np.testing.assert_allclose(step.scales, -1e-3 * jnp.abs(p.scales), rtol=1e-6)
    np.testing.assert_allclose(step.opacity, -1e-3 * p.opacity * (1 - p.opacity), rtol=1e-6)
    np.testing.assert_allclose(step.means, -1e-3 / 8, rtol=1e-6)
    add = p.replace(blend=False)
    step, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, add), tx.init(add), add)
    np.testing.assert_allclose(step.scales, -1e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="pass params"):
        tx.update(ones, tx.init(p))


def test_cli_info_and_decompress_of_a_blended_file(tmp_path, capsys):
    from smartsplat_jax import io as sio
    from smartsplat_jax.cli import main

    h, w = 20, 24
    path = tmp_path / "blend.ssplat"
    path.write_bytes(codec.encode(_blended(4, 60, h, w), h, w))
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "version 3" in text and "60, alpha-blended in depth order (3DGS)" in text
    assert main(["info", str(path), "--json"]) == 0
    assert '"blend": true' in capsys.readouterr().out
    out = tmp_path / "blend.png"
    assert main(["decompress", str(path), str(out), "--backend=xla"]) == 0
    q, _, _ = codec.decode(path.read_bytes())
    want = np.round(np.asarray(render(q, h, w, backend="xla")) * 255)
    np.testing.assert_allclose(sio.load_image(out) * 255, want, atol=1.0)  # 8-bit PNG
