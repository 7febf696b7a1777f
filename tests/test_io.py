"""smartsplat_jax.io: every mode and bit depth, EXIF orientation, bad inputs, atomic saves."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from smartsplat_jax import io as sio
from smartsplat_jax.io import ImageError, image_size, load_image, save_image

RNG = np.random.default_rng(1234)
RGB8 = RNG.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
GREY8 = RNG.integers(0, 256, size=(7, 5), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, size=(7, 5, 3), dtype=np.uint16)
GREY16 = RNG.integers(0, 65536, size=(7, 5), dtype=np.uint16)


def _expect(arr, levels):
    a = arr.astype(np.float64) / levels
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return a


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
def test_lossless_rgb8_formats(tmp_path, fmt):
    p = tmp_path / f"x.{fmt.lower()}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(RGB8).save(p, format=fmt, **kwargs)
    out = load_image(p)
    assert out.dtype == np.float32 and out.shape == (7, 5, 3)
    np.testing.assert_allclose(out, _expect(RGB8, 255), atol=1e-7)


def test_jpeg_is_read_close_to_source(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
    p = tmp_path / "x.jpg"
    Image.fromarray(smooth).save(p, quality=98)
    out = load_image(p)
    assert out.shape == (48, 64, 3)
    assert np.abs(out - smooth / 255.0).max() < 0.05


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1"])
def test_8bit_modes(tmp_path, mode):
    if mode in ("L", "1"):
        im = Image.fromarray(GREY8).convert(mode)
    elif mode == "LA":
        im = Image.merge("LA", [Image.fromarray(GREY8), Image.fromarray(255 - GREY8)])
    elif mode == "RGBA":
        im = Image.fromarray(np.dstack([RGB8, GREY8]))
    elif mode == "P":
        im = Image.fromarray(RGB8).quantize(16)
    else:
        im = Image.fromarray(RGB8)
    assert im.mode == mode
    p = tmp_path / "x.png"
    im.save(p)
    out = load_image(p)
    assert out.shape == (7, 5, 3) and out.dtype == np.float32
    if mode in ("L", "LA", "1"):
        grey = np.asarray(im.convert("L"), np.float64) / 255.0
        np.testing.assert_allclose(out, np.repeat(grey[:, :, None], 3, 2), atol=1e-7)
    elif mode == "P":
        np.testing.assert_allclose(out, np.asarray(im.convert("RGB")) / 255.0, atol=1e-7)
    else:  # alpha dropped, colour kept as stored (not composited)
        np.testing.assert_allclose(out, _expect(RGB8, 255), atol=1e-7)


def _idat_stream(path) -> bytes:
    """The concatenated IDAT payload of a PNG file, each chunk's CRC checked."""
    raw, i, out = open(path, "rb").read(), 8, b""
    while i < len(raw):
        (n,) = struct.unpack(">I", raw[i:i + 4])
        kind, data = raw[i + 4:i + 8], raw[i + 8:i + 8 + n]
        assert struct.unpack(">I", raw[i + 8 + n:i + 12 + n])[0] == zlib.crc32(kind + data)
        out += data if kind == b"IDAT" else b""
        i += 12 + n
    return out


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_bands_deflated_in_pieces(tmp_path, monkeypatch, bit_depth):
    """A streamed PNG deflated in many pieces (one per 3 rows here) over threads is one valid
    zlib stream (its Adler-32 checked by zlib) holding the Sub-filtered rows; its bytes do
    not depend on the number of cores."""
    h, w = 23, 9
    img = RNG.random((h, w, 3)).astype(np.float32)
    row_bytes = 1 + 3 * w * bit_depth // 8
    monkeypatch.setattr(sio, "_PNG_PIECE_BYTES", 3 * row_bytes)
    bands = lambda: [img[:10], img[10:11], img[11:]]  # noqa: E731
    files = []
    for cores in (1, 4):
        monkeypatch.setattr(sio.os, "cpu_count", lambda c=cores: c)
        files.append(sio.save_png_bands(tmp_path / f"c{cores}.png", h, w, bands(),
                                        bit_depth=bit_depth))
    assert files[0].read_bytes() == files[1].read_bytes()
    rows = zlib.decompress(_idat_stream(files[0]))
    assert len(rows) == h * row_bytes
    levels = 255 if bit_depth == 8 else 65535
    expect = np.rint(img * levels).astype(np.uint8 if bit_depth == 8 else ">u2")
    got = np.frombuffer(rows, np.uint8).reshape(h, row_bytes)
    assert np.all(got[:, 0] == 1)  # the Sub filter on every row
    flat = np.cumsum(got[:, 1:].reshape(h, w, -1).astype(np.int64), axis=1) % 256  # un-Sub
    np.testing.assert_array_equal(flat.astype(np.uint8).reshape(h, -1),
                                  expect.reshape(h, -1).view(np.uint8))
    np.testing.assert_allclose(load_image(files[0]), expect.astype(np.float64) / levels,
                               atol=1e-7)


def test_16bit_grey_png(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(GREY16).save(p)
    assert Image.open(p).mode.startswith("I")
    np.testing.assert_allclose(load_image(p), _expect(GREY16, 65535), atol=1e-7)


def test_16bit_rgb_png_and_tiff_keep_full_depth(tmp_path):
    import imagecodecs

    p = tmp_path / "c16.png"
    p.write_bytes(imagecodecs.png_encode(RGB16))
    t = tmp_path / "c16.tif"
    t.write_bytes(imagecodecs.tiff_encode(RGB16))
    rgba = tmp_path / "c16a.png"
    rgba.write_bytes(imagecodecs.png_encode(np.dstack([RGB16, GREY16])))
    for path in (p, t, rgba):
        out = load_image(path)
        # 8-bit truncation would be off by up to 255/65535; full depth is exact.
        np.testing.assert_allclose(out, _expect(RGB16, 65535), atol=1e-7, err_msg=str(path))


@pytest.mark.parametrize("orientation,transform", [
    (1, lambda a: a),
    (2, lambda a: a[:, ::-1]),
    (3, lambda a: a[::-1, ::-1]),
    (4, lambda a: a[::-1]),
    (5, lambda a: np.swapaxes(a, 0, 1)),
    (6, lambda a: np.rot90(a, -1)),
    (7, lambda a: np.rot90(a, -1)[::-1]),
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation(tmp_path, orientation, transform):
    # Lossless (PNG with eXIf) so the pixels can be compared exactly.
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "o.png"
    Image.fromarray(RGB8).save(p, exif=exif.tobytes())
    out = load_image(p)
    # Pillow's own exif_transpose is the independent reference.
    from PIL import ImageOps
    ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) / 255.0
    np.testing.assert_allclose(out, ref, atol=1e-7)
    np.testing.assert_allclose(out, transform(RGB8) / 255.0, atol=1e-7)
    assert image_size(p) == out.shape[:2]  # from the header alone, oriented as load_image


def test_exif_orientation_jpeg_swaps_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "o.jpg"
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(p, exif=exif.tobytes())
    assert load_image(p).shape == (30, 10, 3)
    assert image_size(p) == (30, 10)


def test_image_size_refuses_what_load_image_refuses(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a picture\n" * 10)
    for name, needle in (("nope.png", "no such file"), ("empty.png", "empty"),
                         ("text.png", "not an image")):
        with pytest.raises(ImageError, match=needle) as e:
            image_size(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(ImageError, match="is a directory"):
        image_size(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file") as e:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("hello, I am not a picture\n" * 10)
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


@pytest.mark.parametrize("fmt,keep", [("PNG", 0.6), ("JPEG", 0.5), ("TIFF", 0.5)])
def test_truncated_file(tmp_path, fmt, keep):
    src = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        src, format=fmt)
    data = src.read_bytes()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert str(p) in str(e.value)


def _png_with_size(width, height):
    def chunk(tag, payload):
        return (struct.pack(">I", len(payload)) + tag + payload
                + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_zero_sized_image(tmp_path):
    p = tmp_path / "zero.png"
    p.write_bytes(_png_with_size(0, 5))
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert "zero.png" in str(e.value)


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    # A header claiming 30000 x 30000 pixels: refused from the header alone.
    p = tmp_path / "huge.png"
    p.write_bytes(_png_with_size(30000, 30000))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(p)
    small = tmp_path / "small.png"
    Image.fromarray(RGB8).save(small)
    with pytest.raises(ImageError, match="35 pixels is over the limit of 34"):
        load_image(small, max_pixels=34)
    monkeypatch.setenv("SMARTSPLAT_MAX_PIXELS", "10")
    with pytest.raises(ImageError, match="limit of 10"):
        load_image(small)
    assert load_image(small, max_pixels=35).shape == (7, 5, 3)
    monkeypatch.setenv("SMARTSPLAT_MAX_PIXELS", "many")
    with pytest.raises(ValueError, match="SMARTSPLAT_MAX_PIXELS"):
        load_image(small)


def test_beyond_pillow_bomb_limit_is_accepted(tmp_path):
    # 20000 x 10000 = 200 M pixels: over Pillow's default refusal (~179 M), under ours.
    p = tmp_path / "wide.png"
    p.write_bytes(_png_with_size(20000, 10000))
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(p)  # gets past the size checks to the (empty) pixel data


def test_pillow_global_limit_untouched(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    p = tmp_path / "a.png"
    Image.fromarray(RGB8).save(p)
    load_image(p)
    assert Image.MAX_IMAGE_PIXELS == before


def test_save_roundtrip_8_and_16_bit(tmp_path):
    img = np.random.default_rng(3).random((9, 6, 3)).astype(np.float32)
    p8 = save_image(tmp_path / "a.png", img)
    np.testing.assert_allclose(load_image(p8), np.rint(img * 255) / 255, atol=1e-7)
    p16 = save_image(tmp_path / "b.png", img, bit_depth=16)
    np.testing.assert_allclose(load_image(p16), np.rint(img * 65535) / 65535, atol=1e-7)
    # The IHDR chunk says 16 bits per sample, colour type 2 (RGB), 6 x 9 pixels.
    head = p16.read_bytes()[:29]
    assert head[12:16] == b"IHDR"
    assert struct.unpack(">IIBB", head[16:26]) == (6, 9, 16, 2)


def test_save_clips_and_accepts_grey(tmp_path):
    img = np.array([[-0.5, 0.5], [1.5, 1.0]], np.float32)
    out = load_image(save_image(tmp_path / "g.png", img))
    np.testing.assert_allclose(out[..., 0], [[0, 128 / 255], [1, 1]], atol=1e-7)


def test_save_never_overwrites_unless_asked(tmp_path):
    src = tmp_path / "input.png"
    Image.fromarray(RGB8).save(src)
    before = src.read_bytes()
    img = load_image(src)
    with pytest.raises(FileExistsError, match="input.png"):
        save_image(src, 1.0 - img)
    assert src.read_bytes() == before
    save_image(src, 1.0 - img, overwrite=True)
    np.testing.assert_allclose(load_image(src), 1.0 - img, atol=1e-6)


def test_save_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_image(tmp_path / "a.png", np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        save_image(tmp_path / "a.png", np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="bit_depth"):
        save_image(tmp_path / "a.png", np.zeros((2, 2, 3)), bit_depth=12)
    with pytest.raises(ValueError, match="dtype"):
        save_image(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_image(tmp_path / "no" / "a.png", np.zeros((2, 2, 3)))
    assert not (tmp_path / "a.png").exists()


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        sio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_real_photo(kodak_dir):
    img = load_image(kodak_dir / "kodim04.png")
    assert img.shape == (768, 512, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_atomic_write_gives_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        sio.atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_json_bytes_is_strict_json():
    import json

    from smartsplat_jax.io import json_bytes

    obj = {"psnr": float("inf"), "nan": float("nan"), "ok": 1.5, "np": np.float32(2.0),
           "rows": ({"x": -float("inf")}, [np.int64(3)])}
    back = json.loads(json_bytes(obj), parse_constant=lambda c: pytest.fail(c))
    assert back == {"psnr": None, "nan": None, "ok": 1.5, "np": 2.0, "rows": [{"x": None}, [3]]}


def test_float_grey_tiff_is_clipped_to_unit_range(tmp_path):
    grey = np.linspace(-0.5, 1.5, 35, dtype=np.float32).reshape(7, 5)
    p = tmp_path / "f.tif"
    Image.fromarray(grey).save(p)
    out = load_image(p)
    assert out.shape == (7, 5, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(np.clip(grey, 0, 1)[:, :, None], 3, 2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_values_is_refused(tmp_path, bad):
    grey = np.full((7, 5), 0.5, np.float32)
    grey[2, 3] = grey[4, 1] = bad
    p = tmp_path / "nan.tif"
    Image.fromarray(grey).save(p)
    with pytest.raises(ImageError, match=r"nan\.tif: 2 of 35 sample values are NaN or infinite"):
        load_image(p)


def _patch_tiff_tag(data: bytes, tag: int, value: int) -> bytes:
    """A little-endian TIFF with the inline SHORT value of `tag` in its first IFD replaced."""
    out = bytearray(data)
    assert out[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", out, 4)[0]
    for i in range(struct.unpack_from("<H", out, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", out, at)[0] == tag:
            struct.pack_into("<H", out, at + 8, value)
            return bytes(out)
    raise AssertionError(f"tag {tag} not found")


def test_tiff_sample_format_pillow_cannot_read_is_named(tmp_path):
    src = tmp_path / "f.tif"
    Image.fromarray(np.zeros((7, 5), np.float32)).save(src)
    p = tmp_path / "f64.tif"  # BitsPerSample 64 with SampleFormat float: no Pillow mode
    p.write_bytes(_patch_tiff_tag(src.read_bytes(), 258, 64))
    for read in (load_image, image_size):
        with pytest.raises(ImageError, match=r"f64\.tif: a TIFF file whose sample format "
                                             r"cannot be read"):
            read(p)
