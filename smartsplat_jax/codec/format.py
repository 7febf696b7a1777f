"""The `.ssplat` file format (versions 2 and 3): header, range-coded payload, checksum.

Layout:

  magic    4 bytes  b"SSPL"
  version  1 byte   2, or 3 for blended Gaussians (flags bit 1; the 3DGS baseline)
  header   varints (LEB128; signed ones zigzag-coded), in this order:
             height, width (px), N (the number of Gaussians), flags (bit 0: opacity stored;
             bit 1: the Gaussians are alpha-blended in a stored depth order -- version 3
             only, and required there),
             pos_exp, scale_exp, scale_lo, scale_levels, angle_exp,
             color_exp, color_lo[3], color_levels[3],
             [opacity_exp, opacity_lo, opacity_levels  -- only when flags bit 0 is set]
             origin x, y (the smallest position codes), payload length in bytes
           (the quantizer's fields are those of `quantize.QuantSpec`; they define every grid)
  payload  range-coded streams (`entropy`), a multiple of 4 bytes
  crc      4 bytes  CRC-32 of every byte before it (little-endian)

Payload: the Gaussians sorted along a Z-order (Morton) curve of their position codes (minus
the origin), then, stream by stream:
  1. the Morton-code deltas (the first code, then successive differences): the bit length of
     each (adaptive model over 0..63), then the bits below the leading one, raw;
  2. the major-axis scale code (adaptive, scale_levels symbols);
  3. the anisotropy, major minus minor code (adaptive, scale_levels symbols);
  4. the angle code, uniform over the L(anisotropy) levels of `quantize.angle_levels_table`
     (nothing for isotropic Gaussians);
  5. the three luma/chroma colour codes, one adaptive stream per channel;
  6. the opacity code (adaptive), only when stored;
  7. blended files only: each Gaussian's depth rank (0 = in front), uniform over N values
     (N >= 2**24: the rank's high part uniform, its low 12 bits raw); the ranks must be a
     permutation of 0..N-1. Additive files need no order (a sum does not depend on it).
The adaptive models learn from what was already decoded (`entropy.AdaptiveModel`): nothing
about them is stored. The encoder leaves out the Gaussians that add exactly nothing once
quantized (`dropped`: opacity 0, or colour 0 in an additive set; `codec.prune`), so N counts
the stored Gaussians only; the layout is the same.

Limits (checked before anything is allocated; a file outside them is rejected):
  1 <= height, width <= 65,536; 1 <= N <= min(height * width, 2**25); quantizer fields as in
  `quantize.QUANT_LIMITS`; origin inside the position box; payload length = file length
  minus header and checksum, and at least `min_payload_bytes(N)` (at most 64 Gaussians per
  payload byte: a small file cannot claim millions of Gaussians). Decoding and rendering need
  about 400 bytes of memory per Gaussian plus the output; `pipeline.decode_plan` checks that
  against a memory limit from the header alone, before anything N-sized is allocated.

Version 1 files (smartsplat-jax 0.1: LZMA over fixed-bit-depth planes) are recognised and
refused with a message saying so. Additive files are written as version 2 (the layout did not
change), so decoders that read only version 2 still read them; version 3 marks the blended
files those decoders cannot render, and they refuse them by the version byte.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import numpy as np

from smartsplat_jax import params as P
from smartsplat_jax.codec import entropy
from smartsplat_jax.codec.quantize import (Codes, QuantSpec, angle_levels_table, choose_spec,
                                           dequantize, grid, position_box, quantize)

__all__ = ["MAGIC", "VERSION", "MAX_SIDE", "MAX_GAUSSIANS", "CodecError", "FileInfo", "encode",
           "encode_codes", "dropped", "decode", "read_info", "morton_encode", "morton_decode",
           "header_bytes"]

MAGIC = b"SSPL"
VERSION = 3  # the newest version this module reads and writes
ADDITIVE_VERSION = 2  # additive files (every method but 3DGS) keep version 2's layout
_BLEND_FLAG = 2
_RANK_LOW_BITS = 12  # N >= 2**24: a rank's low bits, coded raw
_CRC_BYTES = 4
MAX_SIDE = 65_536
MAX_GAUSSIANS = 1 << 25
_MAX_EXPONENT = 64  # alphabet of the Morton-delta bit lengths


def min_payload_bytes(n: int) -> int:
    """The smallest payload a file of N Gaussians may have: 4 bytes per 256 Gaussians.

    Real files use far more (about 3 to 8 bytes per Gaussian); the encoder pads with zeros
    to reach it. It bounds the decoder's work by the file's size: a few bytes cannot claim
    millions of Gaussians.
    """
    return 4 * -(-n // 256)


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
    header_bytes: int
    spec: QuantSpec
    origin: tuple[int, int]
    blend: bool = False  # alpha-blended in a stored depth order (3DGS), else additive

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


def _bit_length(v: np.ndarray) -> np.ndarray:
    """[N] int64 bit lengths of uint64 values (0 for 0)."""
    v = v.astype(np.uint64)
    out = np.zeros(v.shape, np.int64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = (v >> np.uint64(shift)) > 0
        out += np.where(big, shift, 0)
        v = np.where(big, v >> np.uint64(shift), v)
    return out + (v > 0)


# ----------------------------------------------------------------------------- varints

def _uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _svarint(v: int) -> bytes:
    return _uvarint(2 * v if v >= 0 else -2 * v - 1)


class _Reader:
    def __init__(self, view: memoryview, pos: int, end: int):
        self.view, self.pos, self.end = view, pos, end

    def u(self, name: str) -> int:
        v = shift = 0
        while True:
            if self.pos >= self.end:
                raise CodecError(f"truncated header: it ends inside the field {name}")
            b = self.view[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return v
            if shift > 63:
                raise CodecError(f"header field {name} is not a valid varint (too long)")

    def s(self, name: str) -> int:
        v = self.u(name)
        return v >> 1 if not v & 1 else -((v + 1) >> 1)


def _header(height: int, width: int, n: int, spec: QuantSpec, origin, payload_len: int,
            blend: bool = False) -> bytes:
    flags = (1 if spec.opacity_levels else 0) | (_BLEND_FLAG if blend else 0)
    fields = [_uvarint(height), _uvarint(width), _uvarint(n), _uvarint(flags),
              _svarint(spec.pos_exp), _svarint(spec.scale_exp), _svarint(spec.scale_lo),
              _uvarint(spec.scale_levels), _svarint(spec.angle_exp), _svarint(spec.color_exp),
              *(_svarint(v) for v in spec.color_lo), *(_uvarint(v) for v in spec.color_levels)]
    if spec.opacity_levels:
        fields += [_svarint(spec.opacity_exp), _svarint(spec.opacity_lo),
                   _uvarint(spec.opacity_levels)]
    fields += [_svarint(int(origin[0])), _svarint(int(origin[1])), _uvarint(payload_len)]
    version = VERSION if blend else ADDITIVE_VERSION
    return MAGIC + bytes([version]) + b"".join(fields)


def header_bytes(height: int, width: int, n: int, spec: QuantSpec, payload_len: int = 0,
                 blend: bool = False) -> int:
    """Bytes of header and checksum for a file of these dimensions (origin taken as 0)."""
    return len(_header(height, width, n, spec, (0, 0), payload_len, blend)) + _CRC_BYTES


def _rank_parts(n: int) -> tuple[int, int]:
    """(uniform alphabet of a rank's high part, raw low bits) for N Gaussians."""
    if n < 1 << 24:
        return n, 0
    return -(-n >> _RANK_LOW_BITS), _RANK_LOW_BITS


# ----------------------------------------------------------------------------- encode

def _host_codes(codes: Codes) -> dict:
    return {k: np.asarray(v).astype(np.int64) for k, v in codes._asdict().items()}


def encode_codes(codes: Codes, spec: QuantSpec, height: int, width: int, *,
                 blend: bool = False) -> bytes:
    """The bytes of a .ssplat file holding these codes (as `quantize` returns them); `blend`:
    the Gaussians are alpha-blended in row order (row 0 in front), which the file keeps."""
    c = _host_codes(codes)
    n = c["position"].shape[0]
    pos = c["position"]
    origin = pos.min(0)
    rel = pos - origin
    morton = morton_encode(rel[:, 0], rel[:, 1])
    order = np.argsort(morton, kind="stable")
    morton = morton[order]
    deltas = np.diff(morton, prepend=np.uint64(0))
    e = _bit_length(deltas)
    enc = entropy.Encoder()
    enc.adaptive(e, _MAX_EXPONENT)
    mbits = np.maximum(e - 1, 0)
    enc.raw(deltas & ((np.uint64(1) << mbits.astype(np.uint64)) - np.uint64(1)), mbits)
    enc.adaptive(c["scale"][order], spec.scale_levels)
    aniso = c["aniso"][order]
    enc.adaptive(aniso, spec.scale_levels)
    enc.uniform(c["angle"][order], angle_levels_table(spec)[aniso])
    for j in range(3):
        enc.adaptive(c["color"][order, j], spec.color_levels[j])
    if spec.opacity_levels:
        enc.adaptive(c["opacity"][order], spec.opacity_levels)
    if blend:  # order[i]: the row, i.e. the depth rank, of the i-th Gaussian in Morton order
        size, low = _rank_parts(n)
        enc.uniform(order >> low, np.full(n, size))
        enc.raw((order & ((1 << low) - 1)).astype(np.uint64), np.full(n, low))
    payload = enc.finish()
    payload += bytes(max(0, min_payload_bytes(n) - len(payload)))  # zeros: never read
    body = _header(height, width, n, spec, origin, len(payload), blend) + payload
    return body + zlib.crc32(body).to_bytes(4, "little")


def encode(params: P.GaussianParams, height: int, width: int, *,
           spec: QuantSpec | None = None) -> bytes:
    """Quantizes and entropy-codes Gaussians into the bytes of a .ssplat file.

    Args:
      params: N Gaussians fitted at height x width px (1 <= N <= MAX_GAUSSIANS).
      height, width: the image size in px (1..MAX_SIDE).
      spec: the quantizer; None: `choose_spec(params, height, width)` (default steps:
        1/4 px, 1/16 octave, 1/256 colour).

    Returns:
      The file's bytes. `decode` of them gives `dequantize(quantize(params, grid(spec)))`
      with the Gaussians in Morton order and the major axis first; for a set with
      `blend=True`, in the params' own row (depth) order and with `blend=True`. The
      Gaussians that add exactly nothing once quantized (`dropped`) are left out, all but
      one if none adds anything: the decoded render is the same, with N' <= N Gaussians.
    """
    P._check_size(height, width)
    params = params.validate()
    n = params.num
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image size {height}x{width} exceeds the format's limit {MAX_SIDE} px")
    if not 1 <= n <= min(MAX_GAUSSIANS, height * width):
        raise ValueError(f"N={n} Gaussians must be in [1, {min(MAX_GAUSSIANS, height * width)}]"
                         f" for a {height}x{width} image")
    spec = (spec or choose_spec(params, height, width)).check()
    codes = _host_codes(_quantize_jit(params, grid(spec), height, width))
    gone = dropped(codes, spec, params.blend)
    if gone.any():
        gone[np.argmin(gone)] = False  # a file holds at least one Gaussian
        codes = {k: v[~gone] for k, v in codes.items()}
    return encode_codes(Codes(**codes), spec, height, width, blend=params.blend)


def dropped(codes, spec: QuantSpec, blend: bool = False) -> np.ndarray:
    """[N] bool: the Gaussians that add exactly nothing once quantized, which `encode` leaves
    out (`codec.prune`): an opacity code that decodes to 0, or, in an additive set, colour
    codes that all decode to 0 (a blended set's black Gaussian still occludes).

    Args:
      codes: `quantize`'s codes (a `Codes` or a dict of its fields).
      spec: the quantizer of the codes.
      blend: the set is alpha-blended.
    """
    c = codes._asdict() if isinstance(codes, Codes) else codes
    color = np.asarray(c["color"], np.int64) + np.asarray(spec.color_lo, np.int64)
    out = np.zeros(color.shape[0], bool)
    if spec.opacity_levels:
        out |= np.asarray(c["opacity"], np.int64) + spec.opacity_lo == 0
    if not blend:
        out |= np.all(color == 0, axis=-1)
    return out


_quantize_jit = jax.jit(quantize, static_argnums=(2, 3))
_dequantize_jit = jax.jit(dequantize, static_argnums=(2, 3))


# ----------------------------------------------------------------------------- decode

def _parse(data) -> tuple[FileInfo, memoryview]:
    """Validates everything but the payload's content; returns (info, payload view)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    size = len(view)
    if size == 0:
        raise CodecError("empty input: a .ssplat file starts with the bytes b'SSPL'")
    head = bytes(view[:4])
    if head != MAGIC:
        if size < 4 and MAGIC.startswith(head):
            raise CodecError(f"truncated file: {size} bytes, not even the magic number")
        raise CodecError(f"not a .ssplat file: magic bytes are {head!r}, expected {MAGIC!r}")
    if size < 5:
        raise CodecError(f"truncated file: {size} bytes, no version byte")
    version = view[4]
    if version == 1:
        raise CodecError("this is a version 1 .ssplat file (written by smartsplat-jax 0.1, "
                         "LZMA-coded); this decoder reads versions 2 and 3: decode it with "
                         "smartsplat-jax 0.1 (pip install 'smartsplat-jax<0.2'), or "
                         "compress the image again")
    if version not in (ADDITIVE_VERSION, VERSION):
        raise CodecError(f"unsupported .ssplat version {version}: this decoder reads versions "
                         f"{ADDITIVE_VERSION} and {VERSION}"
                         + ("; upgrade smartsplat_jax" if version > VERSION else ""))
    if size < 5 + _CRC_BYTES:
        raise CodecError(f"truncated file: {size} bytes, too short for a header and checksum")
    stored = int.from_bytes(view[size - _CRC_BYTES:], "little")
    actual = zlib.crc32(view[:size - _CRC_BYTES])
    if stored != actual:
        raise CodecError(f"checksum mismatch (stored {stored:08x}, computed {actual:08x}): "
                         "the file is damaged or truncated")
    r = _Reader(view, 5, size - _CRC_BYTES)
    height, width, n, flags = r.u("height"), r.u("width"), r.u("N"), r.u("flags")
    for name, v in (("height", height), ("width", width)):
        if not 1 <= v <= MAX_SIDE:
            raise CodecError(f"header {name}={v} is outside [1, {MAX_SIDE}]")
    n_max = min(height * width, MAX_GAUSSIANS)
    if not 1 <= n <= n_max:
        raise CodecError(f"header N={n} is outside [1, {n_max}] for a {height}x{width} image")
    allowed = (0, 1) if version == ADDITIVE_VERSION else (2, 3)
    if flags not in allowed:
        raise CodecError(f"header flags={flags} must be {allowed[0]} or {allowed[1]} in "
                         f"version {version}")
    f = dict(pos_exp=r.s("pos_exp"), scale_exp=r.s("scale_exp"), scale_lo=r.s("scale_lo"),
             scale_levels=r.u("scale_levels"), angle_exp=r.s("angle_exp"),
             color_exp=r.s("color_exp"),
             color_lo=tuple(r.s("color_lo") for _ in range(3)),
             color_levels=tuple(r.u("color_levels") for _ in range(3)))
    if flags & 1:
        f.update(opacity_exp=r.s("opacity_exp"), opacity_lo=r.s("opacity_lo"),
                 opacity_levels=r.u("opacity_levels"))
        if f["opacity_levels"] < 1:
            raise CodecError("header opacity_levels=0 while the flags say opacity is stored")
    try:
        spec = QuantSpec(**f).check()
    except ValueError as e:
        raise CodecError(f"header quantization parameters are invalid: {e}") from None
    ox, oy = r.s("origin x"), r.s("origin y")
    payload_len = r.u("payload length")
    unit = spec.pos_step
    (x0, x1), (y0, y1) = position_box(height, width)
    lim_x = (np.floor(x0 / unit) - 1, np.ceil(x1 / unit) + 1)
    lim_y = (np.floor(y0 / unit) - 1, np.ceil(y1 / unit) + 1)
    if not (lim_x[0] <= ox <= lim_x[1] and lim_y[0] <= oy <= lim_y[1]):
        raise CodecError(f"header position origin ({ox}, {oy}) lies outside the position box "
                         f"x in [{lim_x[0]:.0f}, {lim_x[1]:.0f}], y in [{lim_y[0]:.0f}, "
                         f"{lim_y[1]:.0f}] (grid units)")
    if payload_len < min_payload_bytes(n):
        raise CodecError(f"header N={n} needs a payload of at least {min_payload_bytes(n)} "
                         f"bytes, the file has {payload_len}: not a file this encoder wrote")
    if r.pos + payload_len != size - _CRC_BYTES:
        raise CodecError(f"header announces a {payload_len}-byte payload, the file holds "
                         f"{size - _CRC_BYTES - r.pos} bytes between header and checksum")
    info = FileInfo(version=version, height=height, width=width, num_gaussians=n,
                    file_bytes=size, header_bytes=r.pos + _CRC_BYTES, spec=spec,
                    origin=(ox, oy), blend=bool(flags & _BLEND_FLAG))
    return info, view[r.pos:r.pos + payload_len]


def read_info(data) -> FileInfo:
    """The header of .ssplat bytes, after checking magic, version, length and checksum.

    Raises:
      CodecError: the bytes are not a valid .ssplat file (the message says why).
    """
    return _parse(data)[0]


def decode_codes(data) -> tuple[Codes, FileInfo]:
    """(codes, header) of a .ssplat file: in Morton order, or for a blended file in depth
    order (row 0 in front); see `decode`."""
    info, payload = _parse(data)
    try:
        return _decode_payload(info, payload), info
    except entropy.EntropyError as e:
        raise CodecError(f"payload is damaged: {e}") from None


def _decode_payload(info: FileInfo, payload) -> Codes:
    n, spec = info.num_gaussians, info.spec
    dec = entropy.Decoder(payload)
    e = dec.adaptive(n, _MAX_EXPONENT)
    if e.max() > 53:
        raise CodecError("payload is damaged: a position delta is longer than 53 bits")
    mbits = np.maximum(e - 1, 0)
    mant = dec.raw(mbits)
    deltas = np.where(e > 0, (np.uint64(1) << mbits.astype(np.uint64)) | mant, np.uint64(0))
    with np.errstate(over="ignore"):
        morton = np.cumsum(deltas, dtype=np.uint64)
    if n > 1 and np.any(morton[1:] < morton[:-1]):
        raise CodecError("payload is damaged: the position codes overflow")
    x, y = morton_decode(morton)
    unit = spec.pos_step
    (x0, x1), (y0, y1) = position_box(info.height, info.width)
    px, py = x + info.origin[0], y + info.origin[1]
    if px.max() > np.ceil(x1 / unit) + 1 or py.max() > np.ceil(y1 / unit) + 1:
        raise CodecError("payload is damaged: decoded positions lie outside the position box")
    scale = dec.adaptive(n, spec.scale_levels)
    aniso = dec.adaptive(n, spec.scale_levels)
    if np.any(aniso > scale):
        raise CodecError("payload is damaged: a minor-axis scale code is negative")
    angle = dec.uniform(angle_levels_table(spec)[aniso])
    color = np.stack([dec.adaptive(n, spec.color_levels[j]) for j in range(3)], -1)
    opacity = dec.adaptive(n, spec.opacity_levels) if spec.opacity_levels else np.zeros(n, np.int64)
    i32 = np.int32
    codes = Codes(position=np.stack([px, py], -1).astype(i32), scale=scale.astype(i32),
                  aniso=aniso.astype(i32), angle=angle.astype(i32), color=color.astype(i32),
                  opacity=opacity.astype(i32))
    if not info.blend:
        return codes
    size, low = _rank_parts(n)
    high = dec.uniform(np.full(n, size))
    rank = (high << low) | dec.raw(np.full(n, low)).astype(np.int64)
    if rank.max() >= n or np.any(np.bincount(rank, minlength=n) != 1):
        raise CodecError("payload is damaged: the depth ranks are not a permutation of "
                         f"0..{n - 1}")
    front_to_back = np.argsort(rank)
    return Codes(*(v[front_to_back] for v in codes))


def decode(data) -> tuple[P.GaussianParams, int, int]:
    """(params, height, width) from the bytes of a .ssplat file.

    The params are `dequantize` of the stored codes: float32, Morton order, major axis first;
    a blended file's (version 3) come in their depth order with `blend=True`.
    Memory is bounded by the header's N (itself bounded by MAX_GAUSSIANS and H*W), which is
    checked, with every other header field, before anything is allocated.

    Raises:
      CodecError: wrong magic, unknown version, truncated or damaged file, header values
        outside the documented limits, or a payload that does not match its header.
    """
    codes, info = decode_codes(data)
    params = _dequantize_jit(jax.tree_util.tree_map(np.asarray, codes), grid(info.spec),
                             info.height, info.width)
    return params.replace(blend=info.blend), info.height, info.width
