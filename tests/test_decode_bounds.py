"""Decoding in bounded memory: the plan from the header alone, refusals, banded PNG output."""

import numpy as np
import pytest

from smartsplat_jax import codec, load_image
from smartsplat_jax import params as P
from smartsplat_jax import pipeline
from smartsplat_jax.cli import main
from smartsplat_jax.render import render, rescale_params


@pytest.fixture(scope="module")
def small_file():
    rng = np.random.default_rng(0)
    n, h, w = 60, 30, 44
    xy = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1)
    p = P.GaussianParams.create(means=P.pixel_to_normalized(xy, h, w),
                                scales=rng.uniform(1.0, 6.0, (n, 2)),
                                rotation=rng.normal(0, 1, (n, 1)),
                                colors=rng.uniform(0, 1, (n, 3)))
    data = codec.encode(p, h, w)
    return data, codec.decode(data)[0], h, w


@pytest.mark.parametrize("width", [None, 101])
def test_banded_png_equals_the_whole_render(small_file, tmp_path, monkeypatch, width):
    data, decoded, h, w = small_file
    # Bands of 16 rows: several bands, the last one cropped.
    monkeypatch.setattr(pipeline, "_BAND_BYTES", 16 * pipeline._BYTES_PER_PIXEL * (width or w))
    out = tmp_path / "d.png"
    r = pipeline.decompress_to_file(data, out, width=width, backend="xla")
    oh, ow = r["height"], r["width"]
    assert r["bands"] == -(-oh // 16) and r["bands"] >= 2
    whole = render(rescale_params(decoded, (h, w), (oh, ow)) if width else decoded, oh, ow,
                   backend="xla")
    expect = np.rint(np.clip(np.asarray(whole), 0, 1) * 255) / 255
    np.testing.assert_allclose(load_image(out), expect, atol=1.01 / 255)
    assert np.mean(np.abs(load_image(out) - expect) > 0.5 / 255) < 1e-3  # rounding ties only


def test_render_bands_equal_the_whole_render(small_file):
    _, decoded, h, w = small_file
    whole = np.asarray(render(decoded, h, w, backend="xla"))
    one = list(pipeline.render_bands(decoded, h, w, h, backend="xla"))
    assert len(one) == 1 and np.array_equal(one[0], whole)  # one band: the same program
    bands = list(pipeline.render_bands(decoded, h, w, 16, backend="xla"))
    assert [b.shape for b in bands] == [(16, w, 3), (h - 16, w, 3)]
    # Shifted frames: the same image up to the rounding of the shifted means.
    np.testing.assert_allclose(np.concatenate(bands), whole, atol=2e-5)


def test_row_bucket_by_hand():
    assert [P.row_bucket(n) for n in (0, 1, 31, 32, 33, 45, 46, 47, 60, 61)] == \
        [0, 1, 31, 32, 34, 46, 46, 48, 60, 62]
    assert P.row_bucket(23410) == 23 * 1024
    assert P.row_bucket(1 << 20) == 1 << 20 and P.row_bucket((1 << 20) + 1) == 17 << 16
    for n in range(1, 3000):
        b = P.row_bucket(n)
        assert n <= b <= n + n / 16 and P.row_bucket(b) == b, n
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            P.row_bucket(bad)


@pytest.mark.parametrize("blend", [False, True])
def test_padded_rows_render_nothing(blend):
    rng = np.random.default_rng(3)
    n, h, w = 45, 24, 40
    p = P.GaussianParams.create(
        means=rng.uniform(-1.1, 1.1, (n, 2)), scales=rng.uniform(0.5, 7.0, (n, 2)),
        rotation=rng.normal(0, 1, (n, 1)), colors=rng.uniform(-0.2, 1.0, (n, 3)),
        opacity=rng.uniform(0.3, 1.0, (n, 1)) if blend else None, blend=blend)
    padded = P.pad_rows(p, n + 19)
    assert padded.num == n + 19 and padded.blend == blend
    np.testing.assert_array_equal(np.asarray(padded.colors[:n]), np.asarray(p.colors))
    assert np.all(np.asarray(padded.opacity[n:]) == 0)
    # The same pairs and sums (bit for bit on the CPUs measured; the tolerance leaves room
    # for XLA rounding a longer per-Gaussian array differently, far below one visible row).
    np.testing.assert_allclose(np.asarray(render(padded, h, w, backend="xla")),
                               np.asarray(render(p, h, w, backend="xla")), rtol=0, atol=1e-6)
    assert P.pad_rows(p, n) is p
    with pytest.raises(ValueError, match="below the 45 rows"):
        P.pad_rows(p, n - 1)
    with pytest.raises(TypeError, match="GaussianParams"):
        P.pad_rows(P.CholeskyParams(p.means, p.scales[:, :1].repeat(3, 1), p.colors,
                                    p.opacity), n + 1)


def _file(n, h=30, w=44, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(2, w - 2, n), rng.uniform(2, h - 2, n)], 1)
    p = P.GaussianParams.create(means=P.pixel_to_normalized(xy, h, w),
                                scales=rng.uniform(1.0, 6.0, (n, 2)),
                                rotation=rng.normal(0, 1, (n, 1)),
                                colors=rng.uniform(0.2, 1, (n, 3)))
    return codec.encode(p, h, w)


def test_files_of_one_bucket_share_the_compiled_render():
    from smartsplat_jax import render as R

    a, b, c = _file(45), _file(46, seed=1), _file(47, seed=2)  # buckets 46, 46, 48
    assert [codec.read_info(d).num_gaussians for d in (a, b, c)] == [45, 46, 47]
    before = R._render._cache_size()
    pipeline.decompress(a, backend="xla")
    first = R._render._cache_size()
    assert first <= before + 1
    pipeline.decompress(b, backend="xla")
    assert R._render._cache_size() == first  # b's render is a's compiled program
    pipeline.decompress(c, backend="xla", width=88)
    assert R._render._cache_size() == first + 1  # (the counter counts)
    for data in (a, b, c):  # the decode is the render of the decoded params
        params, h, w = codec.decode(data)
        np.testing.assert_allclose(pipeline.decompress(data, backend="xla"),
                                   np.asarray(render(params, h, w, backend="xla")),
                                   rtol=0, atol=1e-6)


def test_the_plan_refuses_before_decoding(small_file, tmp_path, capsys):
    data, _, h, w = small_file
    out = tmp_path / "big.png"
    assert main(["decompress", str(_write(tmp_path, data)), str(out), "--width=60000",
                 "--memory-limit=600M"]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 0.59 GiB" in err and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(pipeline.MemoryLimitError, match="writing a .png output decodes in bands"):
        pipeline.decompress(data, width=60000, memory_limit="600M")
    with pytest.raises(ValueError, match="at least 64M"):
        pipeline.memory_limit_bytes("1K")


def test_info_says_when_a_file_would_be_refused(tmp_path, capsys, monkeypatch):
    # A valid file of a 65536 x 65536 image with 2^20 Gaussians.
    n = 1 << 20
    rng = np.random.default_rng(1)
    p = P.GaussianParams.create(means=rng.uniform(-1, 1, (n, 2)), scales=np.full((n, 2), 50.0),
                                colors=rng.uniform(0, 1, (n, 3)))
    path = _write(tmp_path, codec.encode(p, 65536, 65536))
    assert main(["info", str(path)]) == 0
    assert "decoding     about" in capsys.readouterr().out
    monkeypatch.setenv("SMARTSPLAT_MEMORY_LIMIT", "200M")
    assert main(["info", str(path)]) == 0
    assert "decoding     refused: decoding 1048576 Gaussians to 65536x65536" in (
        capsys.readouterr().out)


def _write(tmp_path, data):
    path = tmp_path / "f.ssplat"
    path.write_bytes(data)
    return path


def _crafted(height, width, n, payload_len):
    """A file whose header claims height x width and N, with a zero payload and a valid CRC."""
    import zlib

    from smartsplat_jax.codec import format as F

    body = F._header(height, width, n, codec.QuantSpec(), (0, 0), payload_len) + bytes(payload_len)
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_crafted_headers_are_refused_before_anything_is_allocated(tmp_path, capsys):
    import time

    from smartsplat_jax.codec import format as F

    # 2^25 Gaussians with the smallest payload the format allows for them (512 KiB).
    bomb = _write(tmp_path, _crafted(65536, 65536, F.MAX_GAUSSIANS,
                                     F.min_payload_bytes(F.MAX_GAUSSIANS)))
    t0 = time.perf_counter()
    assert main(["decompress", str(bomb), str(tmp_path / "o.png"), "--memory-limit=8G"]) == 1
    assert time.perf_counter() - t0 < 5.0  # refused from the header, nothing decoded
    assert "33554432 Gaussians to 65536x65536 px needs about 13.1" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    # A million Gaussians claimed by 1.4 KB: below the format's payload bound.
    tiny = _write(tmp_path, _crafted(20000, 20000, 10**6, 1400 // 4 * 4))
    assert main(["info", str(tiny)]) == 1
    assert "needs a payload of at least" in capsys.readouterr().err


_FUZZ = r'''
import os, resource, sys, tempfile, time, zlib
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))  # an allocation beyond it fails
from hypothesis import HealthCheck, given, settings, strategies as st
from smartsplat_jax import codec, pipeline
from smartsplat_jax.codec import format as F

good = open(sys.argv[1], "rb").read()
real = F._parse(good)[1].tobytes()  # the real payload
out = os.path.join(tempfile.mkdtemp(), "o.png")
seen = {"ok": 0, "codec": 0, "memory": 0}

@settings(max_examples=int(sys.argv[3]), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(h=st.integers(1, 65536), w=st.integers(1, 65536),
       n=st.one_of(st.integers(1, 1 << 16), st.integers(1 << 21, 1 << 25)),
       extra=st.integers(0, 1 << 12), real_payload=st.booleans(),
       spec=st.sampled_from([codec.QuantSpec(), codec.read_info(good).spec]))
def check(h, w, n, extra, real_payload, spec):
    n = min(n, h * w)
    payload = real if real_payload else bytes(F.min_payload_bytes(n) + 4 * (extra // 4))
    body = F._header(h, w, n, spec, (0, 0), len(payload)) + payload
    blob = body + zlib.crc32(body).to_bytes(4, "little")
    t0 = time.perf_counter()
    try:
        pipeline.decompress_to_file(blob, out, width=min(w, 64), height=min(h, 64),
                                    memory_limit="1G", overwrite=True, backend="xla")
        seen["ok"] += 1
    except codec.CodecError:
        seen["codec"] += 1
    except pipeline.MemoryLimitError:
        seen["memory"] += 1
    assert time.perf_counter() - t0 < 120

check()
print(seen)
'''


def test_fuzz_crafted_headers_under_a_memory_rlimit(small_file, tmp_path):
    """Headers claiming any size and N (valid CRC; zero or real payloads), decoded in a
    subprocess whose data segment is capped at 2 GiB while the decode limit says 1 GiB: each
    is refused (CodecError, MemoryLimitError) or decodes; an allocation the plan did not
    foresee would fail the process."""
    import subprocess
    import sys

    data, *_ = small_file
    path = _write(tmp_path, data)
    run = subprocess.run([sys.executable, "-c", _FUZZ, str(path), str(2 << 30), "25"],
                         capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    seen = eval(run.stdout.strip().splitlines()[-1])  # noqa: S307  the script's own dict
    assert sum(seen.values()) == 25 and seen["memory"] > 0 and seen["codec"] > 0
