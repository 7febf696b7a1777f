"""smartsplat_jax.codec: quantization, the .ssplat format, damaged and crafted files, fuzzing."""

import dataclasses
import struct
import tracemalloc
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartsplat_jax import DEMO_IMAGE, codec, load_image
from smartsplat_jax import params as P
from smartsplat_jax.codec import format as F
from smartsplat_jax.init import smart_init
from smartsplat_jax.codec.rate import LADDER, byte_budget, fit_budget
from smartsplat_jax.render import render, output_size


def scene(seed, n, h, w, *, opacity=False):
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(-3, w + 3, n), rng.uniform(-3, h + 3, n)], 1)
    scales = rng.uniform(0.3, 6.0, (n, 2)) * rng.choice([-1, 1], (n, 2))
    scales[0] = [0.0, 2.0]  # a zero axis
    scales[1] = [1e-9, 3.0]  # below the smallest coded scale
    return P.GaussianParams.create(
        means=P.pixel_to_normalized(jnp.asarray(xy), h, w), scales=scales,
        colors=rng.uniform(-0.4, 1.4, (n, 3)), rotation=rng.normal(0, 2, (n, 1)),
        opacity=rng.uniform(0.2, 1.0, (n, 1)) if opacity else None)


def sort_rows(params):
    """Rows of every field, ordered canonically (the decoder returns Morton order)."""
    a = np.concatenate([np.asarray(getattr(params, f)) for f in
                        ("means", "scales", "rotation", "colors", "opacity")], 1)
    return a[np.lexsort(a.T[::-1])]


def recrc(data: bytes) -> bytes:
    body = bytes(data[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """Overwrites header fields and fixes the checksum: a crafted, 'valid' file."""
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return recrc(bytes(b))


H, W = 40, 56


@pytest.fixture(scope="module")
def small():
    p = scene(0, 150, H, W)
    return p, codec.encode(p, H, W)


# ------------------------------------------------------------------ Morton codes and quantizer

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


def test_quantize_hand_values():
    h, w = 10, 20
    spec = codec.QuantSpec(pos_frac_bits=2, scale_bits=4, angle_bits=3, color_bits=2,
                           scale_lo=-1.0, scale_hi=6.0, color_lo=(0.0, -1.0, 0.0),
                           color_hi=(3.0, 2.0, 0.0))
    xy = jnp.asarray([[3.1, 4.0], [-50.0, 100.0]])  # px; the second is clamped to the box
    theta = jnp.asarray([[np.pi / 2 + 0.01], [np.pi / 2 + np.pi + 0.01]])  # same orientation
    p = P.GaussianParams.create(
        means=P.pixel_to_normalized(xy, h, w), scales=[[0.5, 2.0**6.4], [2**-1.2, 2**-1.3]],
        rotation=P.angle_to_raw(theta), colors=[[1.1, 0.4, 0.0], [2.9, -5.0, 7.0]])
    c = codec.quantize(p, spec, h, w)
    np.testing.assert_array_equal(c["position"], [[12, 16], [-80, 80]])  # 3.1*4 -> 12; box
    # log2 step (6 - -1)/14 = 0.5: 0.5 px = 2**-1 -> code 1; 2**6.4 -> top 15;
    # 2**-1.2 -> t = -0.4 + 1 = 0.6 -> 1; 2**-1.3 -> t = 0.4 < 0.5 -> 0 (exactly 0 px).
    np.testing.assert_array_equal(c["scales"], [[1, 15], [1, 0]])
    np.testing.assert_array_equal(c["angle"], [0, 0])  # 0.01 rad < half a step of pi/8
    # colour steps: 1.0, 1.0, and a degenerate channel
    np.testing.assert_array_equal(c["colors"], [[1, 1, 0], [3, 0, 3]])
    q = codec.dequantize(c, spec, h, w)
    np.testing.assert_allclose(P.normalized_to_pixel(q.means, h, w), [[3.0, 4.0], [-20.0, 20.0]],
                               atol=1e-5)
    np.testing.assert_allclose(q.scales, [[0.5, 64.0], [0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(P.rotation_angle(q.rotation), np.full((2, 1), np.pi / 2), rtol=1e-6)
    np.testing.assert_allclose(q.colors, [[1.0, 0.0, 0.0], [3.0, -1.0, 0.0]])


def test_angle_codes_are_the_same_gaussian():
    """theta and theta + pi quantize to one code, and the decoded covariance matches."""
    rng = np.random.default_rng(3)
    theta = rng.uniform(0.01, np.pi - 0.01, (64, 1))
    base = dict(means=np.zeros((64, 2)), scales=rng.uniform(1, 5, (64, 2)),
                colors=np.zeros((64, 3)))
    p1 = P.GaussianParams.create(rotation=P.angle_to_raw(jnp.asarray(theta)), **base)
    p2 = P.GaussianParams.create(rotation=P.angle_to_raw(jnp.asarray(theta + np.pi)), **base)
    spec = codec.choose_spec(p1, 8, 8, angle_bits=12, scale_bits=16)
    c1, c2 = codec.quantize(p1, spec, 8, 8), codec.quantize(p2, spec, 8, 8)
    np.testing.assert_array_equal(c1["angle"], c2["angle"])
    q = codec.dequantize(c1, spec, 8, 8)
    np.testing.assert_allclose(P.covariance(q), P.covariance(p1), rtol=2e-3, atol=2e-3)


def test_fake_quantize_matches_dequantize_with_identity_gradient():
    p = scene(5, 200, H, W, opacity=True)
    spec = codec.choose_spec(p, H, W)
    fq = codec.fake_quantize(p, spec, H, W)
    dq = codec.dequantize(codec.quantize(p, spec, H, W), spec, H, W)
    for f in ("means", "rotation", "colors", "opacity"):
        np.testing.assert_allclose(getattr(fq, f), getattr(dq, f), atol=2e-5, err_msg=f)
    np.testing.assert_allclose(jnp.abs(fq.scales), dq.scales, rtol=1e-4, atol=1e-6)
    weights = jax.tree_util.tree_map(lambda x: jnp.arange(x.size, dtype=x.dtype).reshape(x.shape), p)
    g = jax.grad(lambda q: sum(jnp.sum(a * b) for a, b in zip(
        jax.tree_util.tree_leaves(codec.fake_quantize(q, spec, H, W)),
        jax.tree_util.tree_leaves(weights))))(p)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(weights)):
        np.testing.assert_allclose(a, b)


def test_spec_rejects_bad_bits():
    with pytest.raises(ValueError, match="color_bits=17"):
        codec.QuantSpec(color_bits=17).check()
    with pytest.raises(ValueError, match="scale range"):
        codec.QuantSpec(scale_lo=2.0, scale_hi=1.0).check()


# ------------------------------------------------------------------ round trip

@pytest.mark.parametrize("opacity", [False, True])
def test_round_trip_equals_dequantized(opacity):
    p = scene(1, 300, H, W, opacity=opacity)
    spec = codec.choose_spec(p, H, W, pos_frac_bits=3, color_bits=10)
    data = codec.encode(p, H, W, spec=spec)
    q, h, w = codec.decode(data)
    assert (h, w) == (H, W) and q.num == p.num
    expected = codec.dequantize(codec.quantize(p, spec, H, W), spec, H, W)
    np.testing.assert_array_equal(sort_rows(q), sort_rows(expected))
    info = codec.read_info(data)
    assert info.spec == spec and info.num_gaussians == 300 and info.file_bytes == len(data)
    assert info.compression_ratio == pytest.approx(3 * H * W / len(data))
    # Decoding is deterministic and a second encoding of the decoded params is identical.
    assert codec.encode(q, H, W, spec=spec) == data


def test_decoded_render_equals_quantized_render(small):
    p, data = small
    q, h, w = codec.decode(data)
    spec = codec.read_info(data).spec
    expected = codec.dequantize(codec.quantize(p, spec, H, W), spec, H, W)
    np.testing.assert_allclose(render(q, h, w), render(expected, H, W), atol=2e-6)
    # and the quantization error of the render is small next to the image
    assert float(jnp.abs(render(q, h, w) - render(p, H, W)).mean()) < 0.02


def test_file_size_within_budget_for_several_crs():
    """Real (initialized) Gaussians of a photo crop fit 3HW/CR bytes, header included. (Below
    ~30 Gaussians the 80-byte header alone breaks the budget: 96x128 at CR 200 cannot fit.)"""
    img = load_image(DEMO_IMAGE)[200:296, 300:428]
    h, w = img.shape[:2]
    for cr in (4, 10, 20, 50, 100):
        n = P.num_gaussians(h, w, cr)
        p, _ = smart_init(jax.random.PRNGKey(cr), img, n)
        spec, data, fits = fit_budget(p, h, w, byte_budget(h, w, cr))
        assert fits, (cr, len(data), byte_budget(h, w, cr))
        assert len(data) <= 3 * h * w / cr
        assert codec.decode(data)[0].num == n


def test_ladder_is_ordered_and_unbounded_budget_takes_the_first_rung(small):
    p, _ = small
    sizes = [len(codec.encode(p, H, W, spec=codec.choose_spec(
        p, H, W, pos_frac_bits=a, scale_bits=b, angle_bits=c, color_bits=d))) for a, b, c, d in LADDER]
    assert sizes == sorted(sizes, reverse=True)
    spec, _, fits = fit_budget(p, H, W, None)
    assert fits and (spec.pos_frac_bits, spec.scale_bits, spec.angle_bits, spec.color_bits) == LADDER[0]
    spec, data, fits = fit_budget(p, H, W, 10)  # impossible: the coarsest file, flagged
    assert not fits and len(data) == sizes[-1]


def test_encode_rejects_bad_input(small):
    p, _ = small
    with pytest.raises(ValueError, match="preset"):
        codec.encode(p, H, W, preset=10)
    with pytest.raises(ValueError, match="N=150"):
        codec.encode(p, 10, 10)
    with pytest.raises(ValueError, match="height"):
        codec.encode(p, 0, W)


# ------------------------------------------------------------------ damaged and crafted files

def test_damaged_files_are_rejected_with_clear_errors(small):
    _, data = small
    cases = {
        b"": "empty input",
        b"PNG\x00" + data[4:]: "not a .ssplat file",
        b"SS": "truncated",
        data[:4] + bytes([2]) + data[5:]: "unsupported .ssplat version 2",
        data[:50]: "truncated",
        data[:-1]: "truncated",
        data[:len(data) // 2]: "truncated",
        data + b"\x00": "unexpected bytes",
    }
    for bad, message in cases.items():
        with pytest.raises(codec.CodecError, match=message):
            codec.decode(bad)
    for offset in (6, 14, 30, 70, F.HEADER_BYTES + 3, len(data) - 10, len(data) - 2):
        b = bytearray(data)
        b[offset] ^= 0x10
        with pytest.raises(codec.CodecError, match="checksum mismatch"):
            codec.decode(bytes(b))


@pytest.mark.parametrize("offset,fmt,value,message", [
    (6, "<I", 0, "height=0"),
    (10, "<I", F.MAX_SIDE + 1, "width=65537"),
    (14, "<I", 2**31, "N=2147483648"),
    (14, "<I", H * W + 1, "N=2241"),
    (18, "<B", 9, "pos_frac_bits=9"),
    (19, "<B", 0, "delta_bytes=0"),
    (20, "<B", 1, "scale_bits=1"),
    (22, "<B", 0, "color_bits=0"),
    (23, "<B", 17, "opacity_bits=17"),
    (24, "<i", -2**31, "origin"),
    (32, "<f", float("nan"), "scale range"),
    (40, "<f", 1e30, "color"),
    (5, "<B", 1, "flags=1"),
])
def test_crafted_headers_are_rejected(small, offset, fmt, value, message):
    _, data = small
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(patch(data, offset, fmt, value))


def test_absurd_header_is_rejected_before_any_large_allocation(small):
    """N = 2**26 on a 65536^2 image passes the limits, but the payload cannot match it: the
    decoder must fail without allocating the ~2 GB such an N would need."""
    _, data = small
    crafted = patch(patch(patch(data, 6, "<I", F.MAX_SIDE), 10, "<I", F.MAX_SIDE),
                    14, "<I", F.MAX_GAUSSIANS)
    tracemalloc.start()
    with pytest.raises(codec.CodecError, match="payload does not match"):
        codec.decode(crafted)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20, peak


def test_payload_that_lies_about_its_content(small):
    p, data = small
    info = codec.read_info(data)
    # A valid LZMA2 stream of the wrong length, with a correct checksum.
    import lzma

    for raw in (b"\x00" * 10, b"\x07" * 100_000):
        payload = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=F._DECODE_FILTERS)
        header = bytearray(data[:F.HEADER_BYTES])
        struct.pack_into("<I", header, 72, len(payload))
        with pytest.raises(codec.CodecError, match="payload does not match"):
            codec.decode(recrc(bytes(header) + payload + b"\x00" * 4))
    # Garbage instead of LZMA2.
    header = bytearray(data[:F.HEADER_BYTES])
    struct.pack_into("<I", header, 72, 64)
    with pytest.raises(codec.CodecError, match="payload"):
        codec.decode(recrc(bytes(header) + bytes(range(64)) + b"\x00" * 4))
    assert info.num_gaussians == p.num


def _check_decoded(result):
    params, h, w = result
    assert 1 <= h <= F.MAX_SIDE and 1 <= w <= F.MAX_SIDE
    for leaf in jax.tree_util.tree_leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf)))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_fuzz_decoder_never_crashes(small, data):
    """Random bytes, and mutations of a real file with its checksum repaired: decode either
    returns finite parameters or raises CodecError, and never anything else."""
    _, good = small
    kind = data.draw(st.sampled_from(["random", "mutate", "truncate", "header"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=400))
        if data.draw(st.booleans()):
            blob = recrc(F.MAGIC + bytes([1]) + blob + b"\x00" * 4)
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
        field = data.draw(st.integers(5, F.HEADER_BYTES - 4))
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


def test_quant_spec_is_hashable_for_jit():
    spec = codec.QuantSpec()
    assert hash(spec) == hash(dataclasses.replace(spec))
