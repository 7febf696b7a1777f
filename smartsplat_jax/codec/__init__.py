"""Real compressed files: quantization, entropy coding and the `.ssplat` format.

  data = encode(params, height, width)          # bytes of a .ssplat file
  params, height, width = decode(data)          # float32 params, Morton-ordered
  info = read_info(data)                        # header: size, N, bytes/Gaussian, real CR

See `quantize` for the bit depths and `format` for the byte layout and the decoder's limits.
"""

from smartsplat_jax.codec.format import (HEADER_BYTES, MAGIC, MAX_GAUSSIANS, MAX_SIDE, VERSION,
                                         CodecError, FileInfo, decode, encode, morton_decode,
                                         morton_encode, read_info)
from smartsplat_jax.codec.quantize import (QUANT_LIMITS, QuantSpec, choose_spec, dequantize,
                                           fake_quantize, quantize)

__all__ = ["HEADER_BYTES", "MAGIC", "MAX_GAUSSIANS", "MAX_SIDE", "VERSION", "CodecError",
           "FileInfo", "QUANT_LIMITS", "QuantSpec", "choose_spec", "decode", "dequantize",
           "encode", "fake_quantize", "morton_decode", "morton_encode", "quantize", "read_info"]
