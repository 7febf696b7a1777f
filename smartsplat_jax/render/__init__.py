"""Differentiable rendering of 2D Gaussians (SPEC §3): one entry point, several backends.

  render(params, height, width, backend="auto") -> [H, W, 3] image, clamped to [0, 1]

Backends:
  * "reference": dense, every Gaussian at every pixel; the test oracle (tiny images only).
  * "xla": tile binning + chunked pair evaluation + segment sums; CPU, GPU and TPU.
  * "auto": the fastest available correct backend (today "xla").
"""

from __future__ import annotations

import functools

import jax

from smartsplat_jax import params as P
from smartsplat_jax.render.reference import render_reference
from smartsplat_jax.render.resize import output_size, rescale_params
from smartsplat_jax.render.xla import DEFAULT_TILE, pair_count, project, render_xla

__all__ = ["BACKENDS", "output_size", "render", "render_reference", "render_xla", "rescale_params",
           "pair_count", "project", "resolve_backend"]

BACKENDS = ("auto", "xla", "reference")


def resolve_backend(backend: str) -> str:
    """Maps a backend name (including "auto") to the one that will run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return "xla" if backend == "auto" else backend


def _check(params: P.GaussianParams, height, width) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer number of pixels")
    if not isinstance(params, P.GaussianParams):
        raise TypeError(f"params must be GaussianParams, got {type(params).__name__}")
    params.validate()


@functools.partial(jax.jit, static_argnames=("height", "width", "backend", "tile", "chunk"))
def render(params: P.GaussianParams, height: int, width: int, *, backend: str = "auto",
           tile: int = DEFAULT_TILE, chunk: int | None = None) -> jax.Array:
    """Renders Gaussians to an image: the clamped accumulated sum of SPEC §3.

    Differentiable with respect to every field of `params` (reverse mode).

    Args:
      params: raw Gaussian parameters (N rows); means normalized, scales in pixels.
      height, width: output size in pixels (static).
      backend: "auto", "xla" or "reference" (static).
      tile, chunk: xla backend tile side in pixels and pairs per loop step (static; chunk
        None picks the platform default, see `xla.default_chunk`).

    Returns:
      [height, width, 3] float image in [0, 1].
    """
    _check(params, height, width)
    name = resolve_backend(backend)
    if name == "reference":
        return render_reference(params, height, width)
    return render_xla(params, height, width, tile=tile, chunk=chunk)
