"""Smoke tests of the benchmark launchers on tiny inputs (they must not rot)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _run(args):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("backends", ["xla,reference",
                                      pytest.param("xla,pallas,reference", marks=pytest.mark.slow)])
def test_bench_render_writes_rows(tmp_path, backends):
    # The pallas row (kernels interpreted on CPU, ~30 s) is slow; its kernels are checked
    # against xla and the oracle in test_render_pallas.
    out = _run(["experiments.bench_render", "--sizes=40x24@5", "--repeats=1", "--scan_steps=2",
                f"--backends={backends}", f"--out={tmp_path / 'r.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "r.json").read_text())
    assert {r["backend"] for r in rows} == set(backends.split(","))
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["step_ms"] > 0 for r in rows)
    assert all(r["loss_fwd_bwd_ms"] > 0 and r["optimizer_ms"] > 0 for r in rows)
    assert all(r["loss_opt_share"] == pytest.approx(
        (r["loss_fwd_bwd_ms"] + r["optimizer_ms"]) / r["step_ms"]) for r in rows)
    assert all(r["scene"] == "synthetic" and r["scan_steps"] == 2 for r in rows)
    by = {r["backend"]: r for r in rows}
    if "pallas" in by:
        assert by["pallas"]["capacity"] >= by["pallas"]["pairs"] > 0
        assert by["pallas"]["max_abs_diff_vs_xla"] <= 1e-5
    assert "| 40x24 | 5 |" in out.stdout


def test_bench_render_on_a_trained_image_scene(tmp_path):
    from smartsplat_jax import DEMO_IMAGE

    out = _run(["experiments.bench_render", "--sizes=40x24@5", "--repeats=1", "--scan_steps=1",
                "--backends=xla", f"--image={DEMO_IMAGE}", "--pretrain_steps=3",
                f"--out={tmp_path / 'r.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["scene"] == str(DEMO_IMAGE) and row["pretrain_steps"] == 3
    assert row["n"] == (3 * 40 * 24) // 35 and row["pairs"] > 0 and row["step_ms"] > 0


def test_bench_init_writes_rows(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)).save(img)
    out = _run(["experiments.bench_init", f"--images={img}", "--crs=10", "--repeats=0",
                f"--out={tmp_path / 'i.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "i.json").read_text())
    assert row["n"] == (3 * 40 * 56) // 70 and row["median_s"] is None
    assert row["psnr_smart_init"] > 0


def test_bench_init_resizes_to_size(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)).save(img)
    out = _run(["experiments.bench_init", f"--images={img}", "--crs=10", "--repeats=0",
                "--size=72x30", f"--out={tmp_path / 'i.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "i.json").read_text())
    assert (row["width"], row["height"], row["n"]) == (72, 30, (3 * 72 * 30) // 70)
    bad = _run(["experiments.bench_init", f"--images={img}", "--size=72by30"])
    assert bad.returncode != 0 and "--size='72by30' must be WIDTHxHEIGHT" in bad.stderr


def test_resize_image_keeps_range_and_constant_images():
    from experiments.common import resize_image

    flat = np.full((20, 30, 3), 0.25, np.float32)
    up = resize_image(flat, 61, 41)
    assert up.shape == (41, 61, 3)
    np.testing.assert_allclose(up, 0.25, atol=1e-6)
    noisy = np.random.default_rng(1).random((20, 30, 3)).astype(np.float32)
    r = resize_image(noisy, 61, 41)
    assert r.min() >= 0.0 and r.max() <= 1.0
    assert resize_image(noisy, 30, 20) is noisy


def test_bench_suite_records_failures_timeouts_and_the_budget(tmp_path):
    from experiments.bench_suite import Part, run_suite

    parts = [Part("ok", ("-c", "import json, sys; json.dump([dict(a=1)], open(sys.argv[1], 'w'))",
                         "{out}/{name}.json"), 60, "writes a row"),
             Part("fail", ("-c", "import sys; print('| x |'); sys.exit(3)"), 60, "exits 3"),
             Part("slow", ("-c", "import time; time.sleep(120)"), 60, "sleeps"),
             Part("late", ("-c", "pass"), 60, "starts after the budget")]
    (tmp_path / "fail.json").write_text("[1]")  # an earlier run's row: not this run's
    rows = run_suite(parts, tmp_path, budget_s=15.0, min_part_s=5.0)
    status = {r["part"]: r["status"] for r in rows}
    assert status["ok"] == "ok" and rows[0]["rows"] == [{"a": 1}]
    assert status["fail"] == "failed (exit 3)" and rows[1]["rows"] is None
    # the slow part gets what is left of the budget, not its own 60 s
    assert status["slow"].startswith("timed out after") and rows[2]["wall_s"] < 15
    assert status["late"].startswith("skipped:")
    assert (tmp_path / "fail.log").read_text() == "| x |\n"
    assert (tmp_path / "inputs" / "demo_2048x1365.png").exists()


def test_bench_suite_keeps_a_resumable_parts_rows_and_reads_them_where_it_writes(tmp_path):
    from experiments.bench_suite import Part, run_suite

    # A launcher that resumes from its own results file (as bench_codec): the suite keeps the
    # file, fills {data} and reads the rows from the part's `result` path.
    script = ("import json, os, sys; p = sys.argv[1]; os.makedirs(os.path.dirname(p), "
              "exist_ok=True); old = json.load(open(p)) if os.path.exists(p) else []; "
              "json.dump(old + [dict(data=sys.argv[2])], open(p, 'w'))")
    part = Part("resumes", ("-c", script, "{out}/{name}/results.json", "{data}"), 60,
                "appends a row", "{out}/{name}/results.json", True)
    assert run_suite([part], tmp_path, data="photos")[0]["rows"] == [{"data": "photos"}]
    rows = run_suite([part], tmp_path, data="photos")[0]["rows"]
    assert rows == [{"data": "photos"}] * 2  # the second run continued the first's file
    once = dataclasses.replace(part, resumable=False)
    assert run_suite([once], tmp_path, data="x")[0]["rows"] == [{"data": "x"}]


def test_bench_suite_codec_profile_lists_its_parts_and_needs_the_photographs(tmp_path):
    listed = _run(["experiments.bench_suite", "--profile=gpu_codec", "--list"])
    assert listed.returncode == 0, listed.stderr[-2000:]
    for needle in ("codec_50k", "--steps=50000", "--max_side=1134", "codec_hires_cr200",
                   "--lr_means=auto", "--lr_scales=auto", "codec_hires_cr200_paper",
                   "codec_hires_cr200_l2", "--loss=l2"):
        assert needle in listed.stdout
    missing = _run(["experiments.bench_suite", "--profile=gpu_codec",
                    f"--data_dir={tmp_path / 'none'}", f"--out_dir={tmp_path / 'out'}"])
    assert missing.returncode != 0 and "is not a folder" in missing.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_bench_suite_smoke_profile(tmp_path):
    out = _run(["experiments.bench_suite", "--profile=smoke", f"--out_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-2000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert [p["status"] for p in suite["parts"]] == ["ok", "ok"]
    env, render = suite["parts"]
    assert env["rows"][0]["platform"] == "cpu" and env["rows"][0]["auto_train"] == "xla"
    assert render["rows"][0]["width"] == 48 and render["rows"][0]["step_ms"] > 0
    assert "| part | status | wall s | what |" in out.stdout
    bad = _run(["experiments.bench_suite", "--profile=gpu", "--only=nope"])
    assert bad.returncode != 0 and "no such part in profile 'gpu'" in bad.stderr


def test_bench_codec_writes_rows_and_plots(tmp_path):
    from smartsplat_jax import DEMO_IMAGE, load_image, save_image

    img = tmp_path / "crop.png"
    save_image(img, load_image(DEMO_IMAGE)[200:264, 300:380])
    args = ["experiments.bench_codec", f"--images={img}", "--crs=10", "--steps=12",
            "--classic=jpeg,webp", f"--out_dir={tmp_path / 'out'}", "--backend=xla"]
    out = _run(args)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = data["cells"]
    assert row["file_bytes"] <= 3 * 64 * 80 // 10 and row["budget_used"] >= 0.97
    assert row["drop"] == row["psnr_float"] - row["psnr"]
    assert row["jpeg_file_bytes"] is None or row["jpeg_file_bytes"] <= row["file_bytes"]
    assert row["webp_psnr"] is None or 5 < row["webp_psnr"] < 60
    with Image.open(tmp_path / "out" / "rd_crop.png") as im:
        assert im.size[1] > im.size[0] / 2  # two panels
    again = _run(args)
    assert again.returncode == 0 and "skip (done)" in again.stdout
    relocating = _run(args + ["--relocate_every=2"])  # a row of its own, not a skip
    assert relocating.returncode == 0 and "skip (done)" not in relocating.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["relocate_every"] for r in data["cells"]] == [0, 2]
    # The means keep the two trainings apart: each is its own row's.
    by = {m["relocate_every"]: m for m in data["means"]}
    assert sorted(by) == [0, 2] and all(m["image"] == "mean of 1" for m in by.values())
    for r in data["cells"]:
        assert by[r["relocate_every"]]["psnr"] == r["psnr"]
    # The CLI's rates (positions 0.3 px per step along the 80-px side, scales 0.1 px per
    # step) are a training of their own.
    # The CLI's rates with the L2 loss (--loss=l2) are a training of their own too.
    rated = _run(args + ["--relocate_every=2", "--lr_means=auto", "--lr_scales=auto",
                         "--loss=l2"])
    assert rated.returncode == 0 and "skip (done)" not in rated.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["relocate_every"], r["lr_means"], r["lr_scales"], r["loss"])
            for r in data["cells"]] == [(0, "paper", "paper", "smartsplat"),
                                        (2, "paper", "paper", "smartsplat"),
                                        (2, "auto", "auto", "l2")]
    assert data["cells"][0]["lr_means_used"] == 1e-4
    assert data["cells"][0]["lr_scales_used"] == 5e-2
    assert data["cells"][2]["lr_means_used"] == pytest.approx(0.6 / 80, rel=1e-12)
    assert data["cells"][2]["lr_scales_used"] == 0.1
    assert len(data["means"]) == 3
    for flag in ("--lr_means", "--lr_scales"):
        bad = _run(args + [f"{flag}=fast"])
        assert bad.returncode != 0 and f"{flag}='fast' must be paper, auto or a number" in (
            bad.stdout + bad.stderr)


def test_bench_decode_writes_rows(tmp_path):
    from smartsplat_jax import codec
    from smartsplat_jax import params as P

    p = P.GaussianParams.create(means=[[0.0, 0.0], [0.4, 0.2]], scales=[[3.0, 2.0], [2.0, 2.0]],
                                colors=[[0.8, 0.2, 0.1], [0.1, 0.5, 0.9]])
    (tmp_path / "a.ssplat").write_bytes(codec.encode(p, 20, 30))
    out = _run(["experiments.bench_decode", f"--files={tmp_path / 'a.ssplat'}", "--repeats=1",
                f"--out={tmp_path / 'd.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "d.json").read_text())
    assert (row["width"], row["height"], row["num_gaussians"]) == (30, 20, 2)
    assert all(row[k] > 0 for k in ("cold_wall_s", "warm_wall_s", "off_wall_s", "peak_rss_mib"))
    assert row["warm_decode_s"] is not None and row["warm_wall_s"] >= row["warm_decode_s"]


@pytest.mark.slow  # ~25 s: a launcher subprocess timing three chunk programs
def test_bench_qat_writes_rows(tmp_path):
    out = _run(["experiments.bench_qat", "--sizes=40x24@10", "--chunk=3", "--repeats=1",
                "--backend=xla", f"--out={tmp_path / 'q.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads((tmp_path / "q.json").read_text())
    assert row["num_gaussians"] == 3 * 40 * 24 // 70
    for k in ("ms_per_step_float", "ms_per_step_qat_program_float_phase",
              "ms_per_step_quantization_aware"):
        assert row[k] > 0, k
    assert row["qat_rate_vs_float"] == row["ms_per_step_float"] / row["ms_per_step_quantization_aware"]
    assert "| 40x24 | 10 |" in out.stdout


def test_launchers_end_an_interrupt_with_one_line(capsys):
    from experiments.common import interruptible
    from smartsplat_jax.train import TrainingInterrupted

    def ctrl_c(argv):
        raise KeyboardInterrupt

    def sigterm_in_training(argv):
        raise TrainingInterrupted("SIGTERM at step 40: checkpoint c.npz; rerun the same "
                                  "command to resume", step=40, checkpoint="c.npz", signum=15)

    for main, status, text in ((ctrl_c, 130, "interrupted: stopped"),
                               (sigterm_in_training, 143, "interrupted: SIGTERM at step 40")):
        with pytest.raises(SystemExit) as exit_:
            interruptible(main)([])
        assert exit_.value.code == status
        err = capsys.readouterr().err
        assert err.startswith(text) and err.count("\n") == 1


def test_bench_sharded_writes_rows(tmp_path):
    # Two simulated CPU devices (the launcher restarts itself with XLA_FLAGS).
    out = _run(["experiments.bench_sharded", "--sizes=48x40@10", "--devices=1,2,1x2",
                "--simulate=2", "--repeats=1", "--scan_steps=2", f"--out={tmp_path / 's.json'}"])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["devices"], r["mesh"]) for r in rows] == [(1, "1x1"), (2, "2x1"), (2, "1x2")]
    assert all(r["scan_steps"] == 2 for r in rows)
    assert all(r["bands_ms"] > 0 and r["one_device_ms"] > 0 for r in rows)
    assert all(r["loss_abs_diff"] < 1e-5 and r["grad_rel_diff"] < 1e-2 for r in rows)
    assert all(0 <= r["grad_max_rel_diff"] < 1e-3 for r in rows), rows
    one, two, _ = rows
    if one["temp_bytes_per_device"] is not None:  # half the band: less memory per device
        assert two["temp_bytes_per_device"] < one["temp_bytes_per_device"]
    assert "| 48x40 | 10 |" in out.stdout
