"""Real compressed files: the quantizer, entropy coding and the `.ssplat` format.

  data = encode(params, height, width, spec=spec)   # bytes of a .ssplat file
  params, height, width = decode(data)               # float32 params, Morton-ordered
  info = read_info(data)                             # header: size, N, bytes/Gaussian, real CR

`quantize` is the one quantizer (jax; the encoder, the decoder and quantization-aware training
all use it), `entropy` the range coder and its adaptive models, `format` the byte layout and
the decoder's limits, `rate` the choice of steps and of N for a byte budget, `rounding` the
choice of the colours' codes on a grid (compensated rounding), `prune` the Gaussians a file
can leave out.
"""

from smartsplat_jax.codec.format import (MAGIC, MAX_GAUSSIANS, MAX_SIDE, VERSION, CodecError,
                                         FileInfo, decode, decode_codes, encode, encode_codes,
                                         header_bytes, morton_decode, morton_encode, read_info)
from smartsplat_jax.codec.quantize import (QUANT_LIMITS, Codes, Grid, QuantSpec, choose_spec,
                                           dequantize, fake_quantize, grid, project, quantize)

__all__ = ["MAGIC", "MAX_GAUSSIANS", "MAX_SIDE", "VERSION", "CodecError", "Codes", "FileInfo",
           "Grid", "QUANT_LIMITS", "QuantSpec", "choose_spec", "decode", "decode_codes",
           "dequantize", "encode", "encode_codes", "fake_quantize", "grid", "header_bytes",
           "morton_decode", "morton_encode", "project", "quantize", "read_info"]
