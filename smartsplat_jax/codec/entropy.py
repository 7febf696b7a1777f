"""Entropy coding of integer code streams: a range coder driven by adaptive probability models.

The coder is `constriction`'s range coder (a well-kept Rust library with numpy bindings; its
models are exactly invertible fixed-point distributions built from the probabilities we give).
What this module adds is the modelling, identical in the encoder and the decoder:

  * `AdaptiveModel`: a categorical distribution over an alphabet [0, K) that learns from the
    symbols already coded, with no side information. Symbols are coded in blocks of growing
    size (64, 128, 256, ... up to 65,536); each block uses the counts of everything before
    it, smoothed over neighbouring values (a triangular kernel whose width shrinks as the
    counts grow) and mixed with a uniform floor, so that a short stream over a large alphabet
    costs about what a smooth density would, and a long one what its histogram would.
    Weights are integers (exact in float64), so both sides build bit-identical models.
  * Per-symbol uniform codes (the angle, whose alphabet depends on the Gaussian's anisotropy)
    and raw bits.

  enc = Encoder(); enc.adaptive(symbols, K); enc.uniform(symbols, sizes); data = enc.finish()
  dec = Decoder(data); dec.adaptive(n, K); dec.uniform(sizes); ...

Decoding never reads past the data (missing words read as zeros) and returns symbols inside
their alphabets or raises `EntropyError` (data no encoder could have written), so a damaged
stream gives wrong but bounded values or that error, never a crash.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Encoder", "Decoder", "EntropyError", "adaptive_cost_bits", "block_bounds",
           "MAX_ALPHABET"]

MAX_ALPHABET = 1 << 16
_FIRST_BLOCK = 64
_MAX_BLOCK = 1 << 16
_RAW_BITS = 16  # raw bits are coded 16 at a time


class EntropyError(ValueError):
    """Compressed data that the models cannot decode (it was not written by `Encoder`)."""


def _constriction():
    import constriction

    return constriction


def block_bounds(n: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the blocks of an n-symbol stream: 64, 64, 128, 256, ... 65,536."""
    out, start, size = [], 0, _FIRST_BLOCK
    while start < n:
        stop = min(n, start + size)
        out.append((start, stop))
        if start > 0:
            size = min(2 * size, _MAX_BLOCK)
        start = stop
    return out


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Sum of x over [i - r, i + r] (zero outside), integer-exact."""
    if r <= 0:
        return x.copy()
    c = np.concatenate([[0], np.cumsum(x)])
    k = x.shape[0]
    i = np.arange(k)
    return c[np.minimum(i + r + 1, k)] - c[np.maximum(i - r, 0)]


def _weights(counts: np.ndarray, seen: int) -> np.ndarray:
    """Integer weights (float64, exact) of the model after `seen` symbols with these counts.

    A triangular blur of half-width r ~ K / (2 sqrt(seen + 1)) spreads each count over its
    neighbours; the raw counts are added with a weight that grows with `seen`, and a floor of
    1 per symbol keeps every symbol codable. Nothing seen yet: uniform.
    """
    k = counts.shape[0]
    if seen == 0:
        return np.ones(k, np.float64)
    r = int(k / (2.0 * np.sqrt(seen + 1.0)))
    r = min(max(r, 1), 256)
    tri = _box_blur(_box_blur(counts, r), r)  # each count spread over 2r+1 ... 4r+1 values
    norm = (2 * r + 1) ** 2
    # Scale so that the raw counts and the blurred ones carry comparable total mass.
    w = tri * 16 + counts * (16 * norm) // 2 + 1
    return w.astype(np.float64)


def adaptive_cost_bits(symbols: np.ndarray, k: int) -> float:
    """The ideal code length, in bits, of `symbols` under `AdaptiveModel` (for analysis)."""
    symbols = np.asarray(symbols, np.int64)
    counts = np.zeros(k, np.int64)
    bits = 0.0
    for a, b in block_bounds(symbols.shape[0]):
        w = _weights(counts, a)
        p = w / w.sum()
        blk = symbols[a:b]
        bits -= float(np.log2(p[blk]).sum())
        counts += np.bincount(blk, minlength=k)
    return bits


class Encoder:
    """Collects streams into one range-coded message (`finish()` -> bytes)."""

    def __init__(self):
        c = _constriction()
        self._enc = c.stream.queue.RangeEncoder()
        self._model = c.stream.model

    def adaptive(self, symbols: np.ndarray, k: int) -> None:
        """Codes symbols in [0, k) with an adaptive model (k <= MAX_ALPHABET)."""
        symbols = np.asarray(symbols, np.int64)
        if not 1 <= k <= MAX_ALPHABET:
            raise ValueError(f"alphabet size {k} must be in [1, {MAX_ALPHABET}]")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= k):
            raise ValueError(f"symbols must lie in [0, {k})")
        if k == 1 or symbols.size == 0:
            return
        counts = np.zeros(k, np.int64)
        for a, b in block_bounds(symbols.shape[0]):
            blk = symbols[a:b]
            model = self._model.Categorical(_weights(counts, a), perfect=False)
            self._enc.encode(blk.astype(np.int32), model)
            counts += np.bincount(blk, minlength=k)

    def uniform(self, symbols: np.ndarray, sizes: np.ndarray) -> None:
        """Codes symbols[i] in [0, sizes[i]) uniformly (sizes of 1 cost nothing)."""
        symbols = np.asarray(symbols, np.int64)
        sizes = np.asarray(sizes, np.int64)
        keep = sizes > 1
        if np.any(symbols[keep] >= sizes[keep]) or np.any(symbols < 0):
            raise ValueError("uniform symbols must lie in [0, size)")
        if np.any(sizes >= 1 << 24):
            raise ValueError("uniform alphabets must be smaller than 2**24")
        if keep.any():
            self._enc.encode(symbols[keep].astype(np.int32), self._model.Uniform(),
                             sizes[keep].astype(np.int32))

    def raw(self, values: np.ndarray, bits: np.ndarray) -> None:
        """Codes the low bits[i] bits of values[i] (uint64) as they are (bits <= 64)."""
        values = np.asarray(values, np.uint64)
        bits = np.asarray(bits, np.int64)
        for lo in range(0, int(bits.max(initial=0)), _RAW_BITS):
            n = np.clip(bits - lo, 0, _RAW_BITS)
            part = (values >> np.uint64(lo)) & ((np.uint64(1) << n.astype(np.uint64)) - np.uint64(1))
            self.uniform(part.astype(np.int64), np.left_shift(1, n))

    def finish(self) -> bytes:
        """The message so far, as little-endian 32-bit words."""
        return self._enc.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads back what an `Encoder` wrote, stream by stream, in the same order."""

    def __init__(self, data: bytes):
        c = _constriction()
        words = np.frombuffer(bytes(data) + b"\0" * (-len(data) % 4), "<u4").astype(np.uint32)
        self._dec = c.stream.queue.RangeDecoder(words)
        self._model = c.stream.model

    def adaptive(self, n: int, k: int) -> np.ndarray:
        """[n] int64 symbols in [0, k) coded by `Encoder.adaptive`."""
        if not 1 <= k <= MAX_ALPHABET:
            raise ValueError(f"alphabet size {k} must be in [1, {MAX_ALPHABET}]")
        out = np.zeros(n, np.int64)
        if k == 1 or n == 0:
            return out
        counts = np.zeros(k, np.int64)
        for a, b in block_bounds(n):
            model = self._model.Categorical(_weights(counts, a), perfect=False)
            blk = np.asarray(self._call(model, b - a), np.int64)
            out[a:b] = blk
            counts += np.bincount(blk, minlength=k)
        return out

    def uniform(self, sizes: np.ndarray) -> np.ndarray:
        """[len(sizes)] int64 symbols coded by `Encoder.uniform` with these sizes."""
        sizes = np.asarray(sizes, np.int64)
        out = np.zeros(sizes.shape[0], np.int64)
        keep = sizes > 1
        if keep.any():
            out[keep] = self._call(self._model.Uniform(), sizes[keep].astype(np.int32))
        return out

    def raw(self, bits: np.ndarray) -> np.ndarray:
        """[len(bits)] uint64 values coded by `Encoder.raw` with these bit counts."""
        bits = np.asarray(bits, np.int64)
        out = np.zeros(bits.shape[0], np.uint64)
        for lo in range(0, int(bits.max(initial=0)), _RAW_BITS):
            n = np.clip(bits - lo, 0, _RAW_BITS)
            part = self.uniform(np.left_shift(1, n)).astype(np.uint64)
            out |= part << np.uint64(lo)
        return out

    def _call(self, *args):
        try:
            return self._dec.decode(*args)
        except (AssertionError, ValueError, RuntimeError, OverflowError) as e:
            raise EntropyError(f"invalid compressed data ({e})") from None
