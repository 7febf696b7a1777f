"""The `.ssplat` file format: header, entropy-coded payload, checksum.

Layout (version 1, all integers little-endian):

  offset size  field
  0      4     magic b"SSPL"
  4      1     version (1)
  5      1     flags (0; reserved)
  6      4     height, px (u32)
  10     4     width, px (u32)
  14     4     N, the number of Gaussians (u32)
  18     1     pos_frac_bits: position grid step 2**-pos_frac_bits px
  19     1     delta_bytes: bytes per Morton-code delta
  20     1     scale_bits
  21     1     angle_bits
  22     1     color_bits
  23     1     opacity_bits (0: every opacity is 1, no opacity stream)
  24     8     origin x, y of the position codes (i32, i32)
  32     8     scale_lo, scale_hi: log2 px (f32, f32)
  40     24    color_lo[3], color_hi[3] (f32)
  64     8     opacity_lo, opacity_hi (f32, f32)
  72     4     payload length in bytes (u32)
  76     ...   payload: raw LZMA2 stream
  end-4  4     CRC-32 of every byte before it

Payload, once decompressed: the Gaussians sorted along a Z-order (Morton) curve of their
position codes, then stored attribute by attribute ("planar"), so that similar bytes sit
together for the entropy coder:
  * the Morton-code deltas (first code minus 0, then successive differences; non-negative),
    as delta_bytes byte planes (low byte of every delta first);
  * scale x codes, scale y codes, angle codes, red, green, blue codes, opacity codes (if
    opacity_bits > 0): each N codes of 1 byte (bits <= 8) or 2 byte planes (bits > 8).

Entropy coding: LZMA2 (Python's standard `lzma`, liblzma) with a fixed 16 MiB dictionary and
the literal context switched off (lc=0), which suits planar small-alphabet streams. It costs
no new dependency, is well kept, and its decoder can be bounded: we ask for at most the size
the header implies and never more.

Limits (checked before anything is allocated; a file outside them is rejected):
  1 <= height, width <= 65,536; 1 <= N <= min(height * width, 2**25); decoding needs
  about 100 bytes of memory per Gaussian;
  bit depths as in `quantize.QUANT_LIMITS`; 1 <= delta_bytes <= 8; ranges finite and inside
  QUANT_LIMITS; origin inside the position box; payload length = file length - 80.
"""

from __future__ import annotations

import dataclasses
import lzma
import struct
import zlib

import numpy as np

from smartsplat_jax import params as P
from smartsplat_jax.codec.quantize import (QuantSpec, choose_spec, code_bytes, dequantize,
                                           position_box, quantize)

__all__ = ["MAGIC", "VERSION", "HEADER_BYTES", "MAX_SIDE", "MAX_GAUSSIANS", "CodecError",
           "FileInfo", "encode", "decode", "read_info", "morton_encode", "morton_decode"]

MAGIC = b"SSPL"
VERSION = 1
_HEADER = struct.Struct("<4sBBIII6B2i2f3f3f2fI")
HEADER_BYTES = _HEADER.size  # 76
_CRC_BYTES = 4
MAX_SIDE = 65_536
MAX_GAUSSIANS = 1 << 25
_DICT_SIZE = 1 << 24
_LZMA_OPTIONS = {"lc": 0, "lp": 0, "pb": 0}
_DECODE_FILTERS = [{"id": lzma.FILTER_LZMA2, "dict_size": _DICT_SIZE}]


class CodecError(ValueError):
    """A .ssplat file (or bytes) that cannot be decoded; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What a .ssplat header says (see the module docstring)."""

    version: int
    height: int
    width: int
    num_gaussians: int
    file_bytes: int
    spec: QuantSpec
    delta_bytes: int
    origin: tuple[int, int]

    @property
    def bytes_per_gaussian(self) -> float:
        return self.file_bytes / self.num_gaussians

    @property
    def compression_ratio(self) -> float:
        """Real compression ratio: raw 8-bit RGB bytes (3 H W) / file bytes."""
        return 3 * self.height * self.width / self.file_bytes

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spec"] = dataclasses.asdict(self.spec)
        d["bytes_per_gaussian"] = self.bytes_per_gaussian
        d["compression_ratio"] = self.compression_ratio
        return d


# ----------------------------------------------------------------------------- Morton codes

def _spread(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF),
                        (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
                        (1, 0x5555555555555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact(v: np.ndarray) -> np.ndarray:
    v = v & np.uint64(0x5555555555555555)
    for shift, mask in ((1, 0x3333333333333333), (2, 0x0F0F0F0F0F0F0F0F),
                        (4, 0x00FF00FF00FF00FF), (8, 0x0000FFFF0000FFFF),
                        (16, 0x00000000FFFFFFFF)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def morton_encode(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N] uint64 Z-order codes of non-negative integers x, y < 2**32 (x in the even bits)."""
    return _spread(x) | (_spread(y) << np.uint64(1))


def morton_decode(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `morton_encode`: ([N] x, [N] y) as int64."""
    code = code.astype(np.uint64)
    return (_compact(code).astype(np.int64), _compact(code >> np.uint64(1)).astype(np.int64))


# ----------------------------------------------------------------------------- helpers

def _planes(values: np.ndarray, nbytes: int) -> bytes:
    """[N] unsigned ints -> nbytes planes of N bytes, low byte first."""
    v = values.astype(np.uint64)
    return b"".join((v >> np.uint64(8 * j)).astype(np.uint8).tobytes() for j in range(nbytes))


def _unplanes(buf: memoryview, n: int, nbytes: int) -> np.ndarray:
    out = np.zeros(n, np.uint64)
    for j in range(nbytes):
        out |= np.frombuffer(buf[j * n:(j + 1) * n], np.uint8).astype(np.uint64) << np.uint64(8 * j)
    return out


def _stream_layout(spec: QuantSpec) -> list[tuple[str, int]]:
    """(name, bits per code) of the attribute streams after the position deltas."""
    streams = [("scale_x", spec.scale_bits), ("scale_y", spec.scale_bits),
               ("angle", spec.angle_bits), ("red", spec.color_bits),
               ("green", spec.color_bits), ("blue", spec.color_bits)]
    if spec.opacity_bits:
        streams.append(("opacity", spec.opacity_bits))
    return streams


def _payload_size(n: int, delta_bytes: int, spec: QuantSpec) -> int:
    return n * (delta_bytes + sum(code_bytes(b) for _, b in _stream_layout(spec)))


# ----------------------------------------------------------------------------- encode

def encode(params: P.GaussianParams, height: int, width: int, *,
           spec: QuantSpec | None = None, preset: int = 6) -> bytes:
    """Quantizes and entropy-codes Gaussians into the bytes of a .ssplat file.

    Args:
      params: N Gaussians fitted at height x width px (1 <= N <= MAX_GAUSSIANS).
      height, width: the image size in px (1..MAX_SIDE).
      spec: the quantizer; None picks `choose_spec(params, height, width)` (8-bit codes,
        1/4 px positions).
      preset: LZMA effort 0..9 (6: the usual balance; the decoder does not depend on it).

    Returns:
      The file's bytes. `decode` of them gives `dequantize(quantize(params, spec))` with the
      Gaussians reordered along the Morton curve.
    """
    P._check_size(height, width)
    params = params.validate()
    n = params.num
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image size {height}x{width} exceeds the format's limit {MAX_SIDE} px")
    if not 1 <= n <= min(MAX_GAUSSIANS, height * width):
        raise ValueError(f"N={n} Gaussians must be in [1, {min(MAX_GAUSSIANS, height * width)}]"
                         f" for a {height}x{width} image")
    if not isinstance(preset, int) or not 0 <= preset <= 9:
        raise ValueError(f"preset={preset!r} must be an integer in [0, 9]")
    spec = (spec or choose_spec(params, height, width)).check()
    codes = quantize(params, spec, height, width)
    pos = codes["position"]
    origin = pos.min(0)
    rel = pos - origin
    morton = morton_encode(rel[:, 0], rel[:, 1])
    order = np.argsort(morton, kind="stable")
    morton = morton[order]
    deltas = np.diff(morton, prepend=np.uint64(0))
    delta_bytes = max(1, (int(deltas.max()).bit_length() + 7) // 8)
    parts = [_planes(deltas, delta_bytes)]
    columns = [codes["scales"][:, 0], codes["scales"][:, 1], codes["angle"],
               codes["colors"][:, 0], codes["colors"][:, 1], codes["colors"][:, 2]]
    if spec.opacity_bits:
        columns.append(codes["opacity"])
    for col, (_, bits) in zip(columns, _stream_layout(spec)):
        parts.append(_planes(col[order], code_bytes(bits)))
    raw = b"".join(parts)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": _DICT_SIZE,
                **_LZMA_OPTIONS}]
    payload = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters)
    header = _HEADER.pack(MAGIC, VERSION, 0, height, width, n, spec.pos_frac_bits, delta_bytes,
                          spec.scale_bits, spec.angle_bits, spec.color_bits, spec.opacity_bits,
                          int(origin[0]), int(origin[1]), spec.scale_lo, spec.scale_hi,
                          *spec.color_lo, *spec.color_hi, spec.opacity_lo, spec.opacity_hi,
                          len(payload))
    body = header + payload
    return body + struct.pack("<I", zlib.crc32(body))


# ----------------------------------------------------------------------------- decode

def _parse(data: bytes) -> tuple[FileInfo, memoryview]:
    """Validates everything but the payload's content; returns (info, payload view)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    size = len(view)
    if size == 0:
        raise CodecError("empty input: a .ssplat file has at least "
                         f"{HEADER_BYTES + _CRC_BYTES} bytes")
    head = bytes(view[:4])
    if head != MAGIC:
        if size < 4 and MAGIC.startswith(head):
            raise CodecError(f"truncated file: {size} bytes, the header alone needs "
                             f"{HEADER_BYTES + _CRC_BYTES}")
        raise CodecError(f"not a .ssplat file: magic bytes are {head!r}, expected {MAGIC!r}")
    if size >= 5 and view[4] != VERSION:
        raise CodecError(f"unsupported .ssplat version {view[4]}: this decoder reads version "
                         f"{VERSION}" + ("; upgrade smartsplat_jax" if view[4] > VERSION else ""))
    if size < HEADER_BYTES + _CRC_BYTES:
        raise CodecError(f"truncated file: {size} bytes, the header alone needs "
                         f"{HEADER_BYTES + _CRC_BYTES}")
    (_, version, flags, height, width, n, pfb, delta_bytes, sb, ab, cb, ob, ox, oy, slo, shi,
     *rest) = _HEADER.unpack_from(view, 0)
    clo, chi, (olo, ohi), payload_len = tuple(rest[0:3]), tuple(rest[3:6]), rest[6:8], rest[8]
    expected = HEADER_BYTES + payload_len + _CRC_BYTES
    if size < expected:
        raise CodecError(f"truncated file: {size} bytes, the header announces {expected} "
                         f"(payload {payload_len} bytes)")
    if size > expected:
        raise CodecError(f"{size - expected} unexpected bytes after the end of the file "
                         f"(the header announces {expected} bytes)")
    stored = struct.unpack_from("<I", view, size - _CRC_BYTES)[0]
    actual = zlib.crc32(view[:size - _CRC_BYTES])
    if stored != actual:
        raise CodecError(f"checksum mismatch (stored {stored:08x}, computed {actual:08x}): "
                         "the file is damaged")
    if flags != 0:
        raise CodecError(f"header flags={flags} must be 0 in version {VERSION}")
    for name, v in (("height", height), ("width", width)):
        if not 1 <= v <= MAX_SIDE:
            raise CodecError(f"header {name}={v} is outside [1, {MAX_SIDE}]")
    n_max = min(height * width, MAX_GAUSSIANS)
    if not 1 <= n <= n_max:
        raise CodecError(f"header N={n} is outside [1, {n_max}] for a {height}x{width} image")
    if not 1 <= delta_bytes <= 8:
        raise CodecError(f"header delta_bytes={delta_bytes} is outside [1, 8]")
    try:
        spec = QuantSpec(pos_frac_bits=pfb, scale_bits=sb, angle_bits=ab, color_bits=cb,
                         opacity_bits=ob, scale_lo=slo, scale_hi=shi, color_lo=clo,
                         color_hi=chi, opacity_lo=olo, opacity_hi=ohi).check()
    except ValueError as e:
        raise CodecError(f"header quantization parameters are invalid: {e}") from None
    unit = 1 << pfb
    (x0, x1), (y0, y1) = position_box(height, width)
    if not (x0 * unit <= ox <= x1 * unit and y0 * unit <= oy <= y1 * unit):
        raise CodecError(f"header position origin ({ox}, {oy}) lies outside the position box "
                         f"x in [{x0 * unit}, {x1 * unit}], y in [{y0 * unit}, {y1 * unit}] "
                         "(grid units)")
    info = FileInfo(version=version, height=height, width=width, num_gaussians=n,
                    file_bytes=size, spec=spec, delta_bytes=delta_bytes, origin=(ox, oy))
    return info, view[HEADER_BYTES:HEADER_BYTES + payload_len]


def read_info(data: bytes) -> FileInfo:
    """The header of .ssplat bytes, after checking magic, version, length and checksum.

    Raises:
      CodecError: the bytes are not a valid .ssplat file (the message says why).
    """
    return _parse(data)[0]


def decode(data: bytes) -> tuple[P.GaussianParams, int, int]:
    """(params, height, width) from the bytes of a .ssplat file.

    Memory is bounded by the header's N (itself bounded by MAX_GAUSSIANS and H*W), which is
    checked, with every other header field, before anything is allocated.

    Raises:
      CodecError: wrong magic, unknown version, truncated or damaged file, header values
        outside the documented limits, or a payload that does not match its header.
    """
    info, payload = _parse(data)
    n, spec = info.num_gaussians, info.spec
    want = _payload_size(n, info.delta_bytes, spec)
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_DECODE_FILTERS)
    try:
        raw = dec.decompress(payload, max_length=want)
    except lzma.LZMAError as e:
        raise CodecError(f"payload is damaged: the LZMA2 decoder says {e}") from None
    if len(raw) != want or not dec.eof or dec.unused_data:
        why = ("shorter" if len(raw) < want else "longer" if not dec.eof
               else "followed by extra data")
        raise CodecError(f"payload does not match the header: it decompresses {why} than the "
                         f"{want} bytes that N={n} and the bit depths imply")
    buf = memoryview(raw)
    db = info.delta_bytes
    deltas = _unplanes(buf[:db * n], n, db)
    with np.errstate(over="ignore"):
        morton = np.cumsum(deltas, dtype=np.uint64)
    if n > 1 and np.any(morton[1:] < morton[:-1]):
        raise CodecError("payload is damaged: the position codes overflow")
    x, y = morton_decode(morton)
    unit = 1 << spec.pos_frac_bits
    (x0, x1), (y0, y1) = position_box(info.height, info.width)
    px = x + info.origin[0]
    py = y + info.origin[1]
    if (px.max() > x1 * unit) or (py.max() > y1 * unit):
        raise CodecError("payload is damaged: decoded positions lie outside the position box")
    off = db * n
    cols = {}
    for name, bits in _stream_layout(spec):
        nb = code_bytes(bits)
        cols[name] = _unplanes(buf[off:off + nb * n], n, nb).astype(np.uint32)
        off += nb * n
        if int(cols[name].max()) >> bits:
            raise CodecError(f"payload is damaged: a {name} code exceeds {bits} bits")
    codes = {"position": np.stack([px, py], -1),
             "scales": np.stack([cols["scale_x"], cols["scale_y"]], -1),
             "angle": cols["angle"],
             "colors": np.stack([cols["red"], cols["green"], cols["blue"]], -1)}
    if spec.opacity_bits:
        codes["opacity"] = cols["opacity"]
    return dequantize(codes, spec, info.height, info.width), info.height, info.width
