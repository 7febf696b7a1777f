"""The `smartsplat` command line end to end."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smartsplat_jax import DEMO_IMAGE, codec, load_image, metrics, save_image
from smartsplat_jax import params as P
from smartsplat_jax.cli import main
from smartsplat_jax.render import render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A 72 x 96 crop of the demo image, compressed once by the CLI (in process)."""
    d = tmp_path_factory.mktemp("cli")
    img = load_image(DEMO_IMAGE)[200:272, 330:426]
    src = d / "crop.png"
    save_image(src, img)
    out = d / "crop.ssplat"
    assert main(["compress", str(src), str(out), "--cr=12", "--steps=30", "--qat-steps=6",
                 "--quiet"]) == 0
    return src, out, img


def test_compress_writes_a_file_within_budget(compressed, capsys):
    src, out, img = compressed
    h, w = img.shape[:2]
    data = out.read_bytes()
    assert 0.97 * (3 * h * w // 12) <= len(data) <= 3 * h * w / 12
    info = codec.read_info(data)
    assert (info.height, info.width) == (h, w)
    # N Gaussians trained; the file leaves out those the render does not need (codec.prune).
    assert 0.5 * P.num_gaussians(h, w, 12) < info.num_gaussians <= P.num_gaussians(h, w, 12)
    params, _, _ = codec.decode(data)
    assert metrics.psnr(render(params, h, w), img) > 15  # 30 steps; the init is ~11 dB


def test_info(compressed, capsys):
    _, out, img = compressed
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{img.shape[1]}x{img.shape[0]} px" in text and "bytes/Gaussian" in text
    assert "real CR" in text and "version 2" in text
    assert main(["info", str(out), "--json"]) == 0
    assert '"num_gaussians"' in capsys.readouterr().out


@pytest.mark.parametrize("flags,size", [([], (96, 72)), (["--scale=2"], (192, 144)),
                                        (["--width=48"], (48, 36)), (["--height=18"], (24, 18)),
                                        (["--width=50", "--height=10"], (50, 10))])
def test_decompress_sizes(compressed, tmp_path, flags, size):
    _, out, img = compressed
    dst = tmp_path / "out.png"
    assert main(["decompress", str(out), str(dst), *flags]) == 0
    with Image.open(dst) as im:
        assert im.size == size
    if not flags:  # at the original size: the 8-bit PNG of the decoded render
        params, h, w = codec.decode(out.read_bytes())
        assert metrics.psnr(load_image(dst), np.asarray(render(params, h, w))) > 45


def test_decompress_scale_2_samples_the_same_image(compressed, tmp_path):
    """Every other pixel of the 2x render (shifted by half a pixel) is near the 1x render."""
    _, out, _ = compressed
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["decompress", str(out), str(a)]) == 0
    assert main(["decompress", str(out), str(b), "--scale=2", "--bit-depth=16"]) == 0
    small, big = load_image(a), load_image(b)
    pooled = big.reshape(small.shape[0], 2, small.shape[1], 2, 3).mean((1, 3))
    assert metrics.psnr(pooled, small) > 25


def test_errors_are_one_line_and_leave_no_file(compressed, tmp_path, capsys):
    src, out, _ = compressed
    damaged = tmp_path / "bad.ssplat"
    data = bytearray(out.read_bytes())
    data[40] ^= 1
    damaged.write_bytes(bytes(data))
    cases = [
        (["decompress", str(damaged), str(tmp_path / "x.png")], "checksum mismatch"),
        (["decompress", str(src), str(tmp_path / "x.png")], "not a .ssplat file"),
        (["decompress", str(tmp_path / "none.ssplat"), str(tmp_path / "x.png")], "cannot read"),
        (["decompress", str(out), str(tmp_path / "x.png"), "--scale=2", "--width=3"],
         "either scale or width"),
        (["decompress", str(out), str(tmp_path / "x.png"), "--width=0"], "width=0"),
        (["decompress", str(out), str(src)], "exists; pass --force"),
        (["compress", str(src), str(tmp_path / "y.ssplat"), "--cr=0"], "cr=0"),
        (["compress", str(tmp_path / "none.png"), str(tmp_path / "y.ssplat"), "--cr=10"],
         "no such file"),
        (["compress", str(src), str(tmp_path / "y.ssplat"), "--cr=10", "--steps=0"], "steps=0"),
        (["info", str(src)], "not a .ssplat file"),
        # Outputs are checked before the work: never the input, never a folder, known formats.
        (["compress", str(src), str(src), "--cr=10", "--force"], "is the input file"),
        (["decompress", str(out), str(out), "--force"], "is the input file"),
        (["decompress", str(out), str(tmp_path / "x.bmp")], "cannot tell the image format"),
        (["decompress", str(out), str(tmp_path / "x.jpg"), "--bit-depth=16"], "JPEG holds 8"),
        (["decompress", str(out), str(tmp_path), "--force"], "is a folder"),
        (["compress", str(src), str(tmp_path / "y.ssplat"), "--cr=10", "--qat-steps=-3"],
         "qat_steps=-3"),
        # compress writes a .ssplat file: an image's name is a mix-up with decompress.
        (["compress", str(src), str(tmp_path / "x.png"), "--cr=10"], "name it e.g."),
        (["compress", str(src), str(tmp_path / "x.JPG"), "--cr=10"], "(.JPG names an image"),
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.ssplat").exists()


def test_module_entry_point_and_usage_errors(compressed):
    _, out, _ = compressed
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    ok = subprocess.run([sys.executable, "-m", "smartsplat_jax", "info", str(out)], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and "Gaussians" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "smartsplat_jax", "compress", "a.png"], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "required" in bad.stderr and "Traceback" not in bad.stderr
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "a.png", "b.ssplat", "--cr=abc"])
    assert exit_.value.code == 1  # one convention: every error exits 1


@pytest.mark.parametrize("name,magic", [("d.jpg", b"\xff\xd8\xff"), ("d.tif", b"II*\x00"),
                                        ("d.webp", b"RIFF"), ("d.png", b"\x89PNG")])
def test_decompress_writes_the_format_its_extension_names(compressed, tmp_path, name, magic):
    src, out, img = compressed
    dst = tmp_path / name
    assert main(["decompress", str(out), str(dst)]) == 0
    assert dst.read_bytes().startswith(magic)
    back = load_image(dst)
    assert back.shape == img.shape and metrics.psnr(back, img) > 15


def test_gaussians_flag_takes_paper_auto_or_a_count(capsys):
    from smartsplat_jax.cli import _parser

    parse = lambda v: _parser().parse_args(  # noqa: E731
        ["compress", "a.png", "a.ssplat", "--cr", "20", "--gaussians", v])
    assert [parse(v).gaussians for v in ("paper", "auto", "120")] == ["paper", "auto", 120]
    with pytest.raises(SystemExit):
        parse("many")
    assert "'many' is not paper, auto or an integer" in capsys.readouterr().err


# The demo photo is 768 x 512: the default position rate is 0.3 px per step along 768 px.
_RATE = 2 * 0.3 / 768


@pytest.mark.parametrize("flags, every, rate, scales", [
    (["--steps=1000"], 250, _RATE, 0.1),  # the defaults: relocation (min(500, steps // 4)),
    (["--steps=20000"], 500, _RATE, 0.1),  # 0.3 px per step for the positions and 0.1 px
    (["--steps=300"], 0, _RATE, 0.1),  # for the scales (smartsplat); too short to relocate
    (["--steps=1000", "--relocate-every=0", "--lr-means=1e-4", "--lr-scales=0.05"], 0, 1e-4,
     0.05),  # the paper's
    (["--steps=1000", "--relocate-every=100", "--lr-scales=0.2"], 100, _RATE, 0.2),
    (["--steps=1000", "--method=gaussianimage-rs"], 0, 1e-3, 1e-3),  # as published
    (["--steps=1000", "--loss=l2"], 250, _RATE, 0.1),  # another loss, the same rates
])
def test_compress_trains_with_the_front_end_defaults(monkeypatch, tmp_path, capsys, flags,
                                                     every, rate, scales):
    import smartsplat_jax.pipeline as pipeline

    seen = {}

    def fake(path, **kwargs):  # records what the CLI asks for, then stops
        seen.update(kwargs)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(pipeline, "compress_image", fake)
    assert main(["compress", str(DEMO_IMAGE), str(tmp_path / "x.ssplat"), "--cr=20",
                 *flags]) == 1
    assert "stopped by the test" in capsys.readouterr().err
    assert seen["relocate_every"] == every
    assert seen["lr_means"] == pytest.approx(rate, rel=1e-12)
    assert seen["lr_scales"] == scales
    # --loss is passed on when given; otherwise the method's own loss (no override)
    assert seen.get("loss") == ("l2" if "--loss=l2" in flags else None)
    assert not (tmp_path / "x.ssplat").exists()


def test_importing_the_command_line_loads_neither_numpy_nor_jax():
    """`run` sets up the process (the garbage collector) before the heavy imports: that
    needs a package whose import is light (its names load on first use)."""
    code = ("import sys; import smartsplat_jax, smartsplat_jax.cli; "
            "print(sorted(m for m in ('jax', 'numpy') if m in sys.modules)); "
            "from smartsplat_jax import load_image, codec; print('jax' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "True"]


@pytest.mark.parametrize("argv,collecting", [(["info", "x.ssplat"], False),
                                             (["decompress", "a", "b.png"], False),
                                             (["compress", "a.png", "b.ssplat"], True),
                                             ([], False)])
def test_run_exits_with_main_status_and_collects_only_for_compress(argv, collecting):
    code = ("import gc, sys; from smartsplat_jax import cli; "
            "cli.main = lambda argv: print(gc.isenabled(), argv) or 7; cli.run()")
    r = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == f"{collecting} {argv}"
