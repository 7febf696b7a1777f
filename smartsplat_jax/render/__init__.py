"""Differentiable rendering of 2D Gaussians (SPEC §3): one entry point, several backends.

  render(params, height, width, backend="auto") -> [H, W, 3] image, clamped to [0, 1]

Backends (all compute the same image up to float rounding):
  * "reference": dense, every Gaussian at every pixel; the test oracle (tiny images only).
  * "xla": tile binning + chunked pair evaluation + segment sums; CPU, GPU and TPU.
  * "pallas": tile-sorted pair list walked by Pallas kernels (forward and backward); compiled
    with Triton on GPUs from Ampere (sm_80) up, interpreted (slow, for tests) elsewhere.
  * "auto": "pallas" on GPUs where it is supported and measured faster, otherwise "xla"
    (see `smartsplat_jax.render.auto`; the choice and its reason are logged).

A set with `blend=True` (the 3DGS baseline, `params.GaussianParams`) is alpha-blended front
to back instead (`render.blend`): "reference" renders it densely, every other backend with
the tiled XLA blending rasterizer (it has no Pallas kernel).
"""

from __future__ import annotations

import functools
import logging

import jax

from smartsplat_jax import params as P
from smartsplat_jax.render.auto import auto_backend, traced_choice
from smartsplat_jax.render.reference import render_reference
from smartsplat_jax.render.resize import output_size, rescale_params
from smartsplat_jax.render.xla import DEFAULT_TILE, pair_count, project, render_xla

__all__ = ["BACKENDS", "output_size", "render", "render_pallas", "render_reference",
           "render_xla", "rescale_params", "pair_capacity", "pair_count", "project",
           "resolve_backend"]

BACKENDS = ("auto", "xla", "pallas", "reference")
log = logging.getLogger("smartsplat_jax.render")
_warned_interpret = False
# Imported on first use (Pallas takes a tenth of a second to import, which a decode on a CPU
# does not need): `smartsplat_jax.render.pallas` and these names from it.
_FROM_PALLAS = ("pair_capacity", "render_pallas")


def __getattr__(name: str):
    if name in _FROM_PALLAS:
        from smartsplat_jax.render import pallas

        return getattr(pallas, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_backend(backend: str, device=None, *, forward_only: bool = False) -> str:
    """Maps a backend name (including "auto") to the one that will run on `device`;
    `forward_only` for renders that are never differentiated (see `auto.auto_backend`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return auto_backend(device, forward_only=forward_only) if backend == "auto" else backend


def _check(params: P.GaussianParams, height, width) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer number of pixels")
    if not isinstance(params, (P.GaussianParams, P.CholeskyParams)):
        raise TypeError(f"params must be GaussianParams or CholeskyParams, got "
                        f"{type(params).__name__}")
    params.validate()


def _is_traced(params: P.GaussianParams) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(params))


def render(params: P.GaussianParams, height: int, width: int, *, backend: str = "auto",
           tile: int | None = None, chunk: int | None = None,
           capacity: int | None = None) -> jax.Array:
    """Renders Gaussians to an image: the clamped accumulated sum of SPEC §3 (or, for a set
    with `blend=True`, their front-to-back alpha blend; see the module docstring).

    Differentiable with respect to every field of `params` (reverse mode); usable inside
    `jit`, `grad` and `lax.scan`.

    Args:
      params: raw Gaussian parameters (N rows); means normalized, scales in pixels.
      height, width: output size in pixels (static).
      backend: "auto", "xla", "pallas" or "reference" (static). Inside a traced function
        "auto" takes the choice already made (`resolve_backend`, which callers run first)
        and never runs the timing probe.
      tile: tile side in pixels (static); None: the backend's default (xla 4, pallas 16).
      chunk: xla backend, pairs per loop step (static); None: `xla.default_chunk()`.
      capacity: pallas backend, length of its pair list (static). None: from the actual
        pair count (`pair_capacity`) when `params` are concrete, else
        `pallas.default_capacity`. Too small only costs speed (the xla fallback).

    Returns:
      [height, width, 3] float image in [0, 1].
    """
    global _warned_interpret
    _check(params, height, width)
    if params.blend:
        name = "reference" if backend == "reference" else "xla"
        return _render(params, height, width, backend=name,
                       tile=DEFAULT_TILE if tile is None else tile, chunk=chunk, capacity=None)
    if backend == "auto" and _is_traced(params):
        name = traced_choice()  # no probe while tracing (see `render.auto`)
    else:
        name = resolve_backend(backend)
    if name == "pallas":
        from smartsplat_jax.render import pallas

        if tile is None:
            tile = pallas.DEFAULT_TILE
        if jax.default_backend() != "gpu" and not _warned_interpret:
            _warned_interpret = True
            log.warning("backend 'pallas' on %s runs the kernels in the Pallas interpreter: "
                        "correct but slow; use 'xla' or 'auto' for speed",
                        jax.default_backend())
        if capacity is None and not _is_traced(params):
            capacity = pallas.pair_capacity(params, height, width, tile)
    elif tile is None:
        tile = DEFAULT_TILE
    return _render(params, height, width, backend=name, tile=tile, chunk=chunk,
                   capacity=capacity)


@functools.partial(jax.jit, static_argnames=("height", "width", "backend", "tile", "chunk",
                                             "capacity"))
def _render(params, height, width, *, backend, tile, chunk, capacity):
    if params.blend:
        from smartsplat_jax.render.blend import render_blend, render_blend_reference

        if backend == "reference":
            return render_blend_reference(params, height, width)
        return render_blend(params, height, width, tile=tile, chunk=chunk)
    if backend == "reference":
        return render_reference(params, height, width)
    if backend == "pallas":
        from smartsplat_jax.render.pallas import render_pallas

        return render_pallas(params, height, width, tile=tile, capacity=capacity)
    return render_xla(params, height, width, tile=tile, chunk=chunk)
