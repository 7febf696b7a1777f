"""Tiled rasterizer with Pallas kernels for the hot loop (forward and backward).

Same definition as every backend (SPEC §3: accumulated sum, alpha = min(1, o exp(-q)), kept
where alpha >= 1/255, clamp to [0, 1]) and the same arithmetic: q = 0.5 |M d|^2 with the
whitening M of `xla.project`, never negative, so the forward and backward stay finite for
needle-thin Gaussians; only the order of the work differs.

Algorithm:
  1. `xla.project` at tile side T (default 16, so 256 pixels per kernel program) gives the
     per-Gaussian features [N, 10] and each Gaussian's tile range.
  2. Binning (XLA): the (tile, Gaussian) pairs are enumerated in Gaussian-major order into a
     list of static length `capacity`, then stably sorted by tile, so each tile owns one
     contiguous range of the sorted list, its Gaussians in ascending index order.
     `bounds[t]` .. `bounds[t + 1]` is tile t's range. The features are gathered once into
     pair order, planar ([10, capacity + batch]), so the kernels read them contiguously.
  3. Forward kernel, one program per tile: walks the tile's range `batch` pairs at a time,
     evaluates the [batch, T*T] alphas and accumulates alpha * colour into three [T*T]
     accumulators held on chip; each program writes its own tile once.
  4. Backward kernel, one program per tile: loads the tile's image cotangent once, walks the
     same range and writes, for every pair, the gradient of the loss with respect to the
     pair's 10 features (a reduction over the tile's pixels) into that pair's own slot. Every
     slot has exactly one writer: no atomics, so interpret mode (whose atomics drop duplicate
     adds) and the GPU compute the same numbers, deterministically.
  5. The per-pair gradients are put back in Gaussian-major order (a permutation) and reduced
     per Gaussian with the same sorted segment sum as the `xla` backend. The feature
     gradients flow to the raw parameters through `project` by autodiff.

Capacity: the pair list has a static length. When a scene has more pairs than `capacity`,
the render falls back to the `xla` backend inside the same compiled function (`lax.cond`),
so an undersized capacity costs speed, never pixels. `pair_capacity` picks a power-of-two
bucket from the actual pair count (outside `jit`), so the fallback is the exception.

Devices: the kernels use the Triton lowering of `pallas_call` (GPUs from Ampere, sm_80, up;
jax 0.10 to 0.12, where jax >= 0.11 warns that this lowering is deprecated). On any other
platform they run with `interpret=True`: correct and slow, meant for tests.

Memory (float32): besides the `project` arrays, the peak is in the backward: about 150
bytes per pair slot (the saved Gaussian ids and permutation, the planar features, the
per-pair gradients and their Gaussian-major copy), plus a few image-sized buffers (12
bytes per padded pixel each: the tile image, the cotangent and their re-layouts). At 16K x
16K, CR 200, with a capacity of 2^24 pairs: ~2.5 GB for the slots and 3.2 GB per image
buffer. Nothing scales with pixels x Gaussians.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from smartsplat_jax import params as P
from smartsplat_jax.render import xla

__all__ = ["DEFAULT_BATCH", "DEFAULT_TILE", "Binning", "bin_pairs", "default_capacity",
           "pair_capacity", "render_pallas", "triton_supported"]

DEFAULT_TILE = 16  # pixels per tile side: 256 pixels per program.
DEFAULT_BATCH = 16  # pairs per inner-loop step: [16, 256] temporaries per program.
_NUM_WARPS = 4
_MIN_CAPACITY = 1 << 12
_MAX_CAPACITY = 1 << 30  # pair indices and sort keys are int32
NF = xla.NUM_FEATURES


def _is_pow2(v: int) -> bool:
    return v >= 1 and (v & (v - 1)) == 0


def _check_static(tile, batch, capacity) -> None:
    for name, v, lo in (("tile", tile, 2), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not _is_pow2(v) or v < lo or v > 64:
            raise ValueError(f"{name}={v!r} must be a power of two in [{lo}, 64] "
                             "(the kernels' block shapes are powers of two)")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int)
                                 or not 1 <= capacity <= _MAX_CAPACITY):
        raise ValueError(f"capacity={capacity!r} must be an integer in [1, {_MAX_CAPACITY}]")


def triton_supported(device=None) -> tuple[bool, str]:
    """(supported, reason): can the Triton lowering of the kernels run on `device`?

    True on CUDA GPUs of compute capability >= 8.0 (Ampere and newer), with a jax that still
    ships Pallas's Triton backend (deprecated since jax 0.11; where a later jax drops it,
    "auto" takes `xla` for training and decoding alike). `device`: a jax.Device, default the
    first device of the default backend.
    """
    device = jax.devices()[0] if device is None else device
    if device.platform != "gpu":
        return False, f"the device is {device.platform!r}, not a GPU (Pallas runs interpreted)"
    if importlib.util.find_spec("jax.experimental.pallas.triton") is None:
        return False, (f"jax {jax.__version__} has no Pallas Triton backend "
                       "(jax.experimental.pallas.triton), which the kernels are written for")
    cc = getattr(device, "compute_capability", None)
    try:
        major = int(str(cc).split(".")[0])
    except ValueError:
        return False, f"unknown compute capability {cc!r} of {device.device_kind}"
    if major < 8:
        return False, (f"{device.device_kind} has compute capability {cc}; the Triton kernels "
                       "need 8.0 (Ampere) or newer")
    return True, f"{device.device_kind}, compute capability {cc}"


def _interpret_default() -> bool:
    return jax.default_backend() != "gpu"


class Binning(NamedTuple):
    """Tile-major pair list (see module docstring).

    Attributes:
      gid: [capacity] int32, Gaussian of each pair in Gaussian-major order (sorted).
      order: [capacity] int32, position in the Gaussian-major list of each sorted pair.
      bounds: [num_tiles + 1] int32, tile t owns sorted pairs bounds[t] .. bounds[t + 1].
      total: [] int32, number of pairs the scene has (may exceed capacity: overflow).
    """

    gid: jax.Array
    order: jax.Array
    bounds: jax.Array
    total: jax.Array


def bin_pairs(proj: xla.Projection, height: int, width: int, tile: int,
              capacity: int) -> Binning:
    """Enumerates the (tile, Gaussian) pairs of `proj` (projected at `tile`) and sorts them
    by tile. Pairs beyond `capacity` are not listed (`total > capacity` says so)."""
    tiles_y, tiles_x = xla._grid(height, width, tile)
    num_tiles = tiles_y * tiles_x
    counts = proj.counts.astype(jnp.int32)
    ends = jnp.cumsum(counts, dtype=jnp.int32)
    total = ends[-1]
    starts = ends - counts
    # Gaussian of pair k: the last Gaussian starting at or before k (O(capacity) with one
    # scatter of N ones and a cumsum, instead of a binary search per pair).
    k = jnp.arange(capacity, dtype=jnp.int32)
    marks = jnp.zeros((capacity,), jnp.int32).at[starts].add(1, mode="drop")
    gid = jnp.clip(jnp.cumsum(marks, dtype=jnp.int32) - 1, 0, counts.shape[0] - 1)
    local = k - starts[gid]
    wx = jnp.maximum(proj.wx[gid], 1)
    tile_x = proj.tx0[gid] + local % wx
    tile_y = proj.ty0[gid] + local // wx
    tid = jnp.where(k < total, tile_y * tiles_x + tile_x, num_tiles).astype(jnp.int32)
    order = k
    tid_sorted, order = lax.sort((tid, order), num_keys=1, is_stable=True)
    bounds = jnp.searchsorted(tid_sorted, jnp.arange(num_tiles + 1, dtype=jnp.int32),
                              side="left").astype(jnp.int32)
    return Binning(gid=gid, order=order, bounds=bounds, total=total)


def _pixel_coords(t, tiles_x: int, tile: int, dtype):
    """Pixel coordinates (x, y) [T*T] of the pixels of tile t (row-major), as `dtype`."""
    ty = lax.div(t, jnp.int32(tiles_x))
    tx = t - ty * tiles_x
    pix = lax.iota(jnp.int32, tile * tile)
    lx = lax.rem(pix, jnp.int32(tile))
    ly = lax.div(pix, jnp.int32(tile))
    return (tx * tile + lx).astype(dtype), (ty * tile + ly).astype(dtype)


def _num_batches(start, end, batch: int):
    """Inner-loop trip count of a tile owning sorted pairs [start, end): ceil(len / batch)."""
    return lax.div(end - start + jnp.int32(batch - 1), jnp.int32(batch))


def _batch_terms(pf_ref, off, end, px, py, batch: int):
    """Loads `batch` pairs from `off` and evaluates them over the tile's pixels.

    Returns (f, dx, dy, u, t, e, v, alpha, keep): f is the list of 10 [batch] feature
    vectors, the others [batch, T*T] with the same meaning and arithmetic as
    `xla._pair_terms`; lanes at or beyond `end` (another tile's pairs or padding) are not kept.
    """
    f = [pf_ref[k, pl.ds(off, batch)] for k in range(NF)]
    lane = off + lax.iota(jnp.int32, batch)
    dx = f[0][:, None] - px[None, :]
    dy = f[1][:, None] - py[None, :]
    u = f[2][:, None] * dx + f[3][:, None] * dy
    t = f[4][:, None] * dx + f[5][:, None] * dy
    e = jnp.exp(-0.5 * (u * u + t * t))
    v = f[9][:, None] * e
    alpha = jnp.minimum(1.0, v)
    keep = (alpha >= xla.ALPHA_MIN) & (lane < end)[:, None]
    return f, dx, dy, u, t, e, v, jnp.where(keep, alpha, 0.0), keep


def _forward_kernel(bounds_ref, pf_ref, r_ref, g_ref, b_ref, *, tile, batch, tiles_x):
    """One tile: r/g/b_ref [T*T] <- sum over the tile's pairs of alpha * colour."""
    t = pl.program_id(0)
    start = bounds_ref[t]
    end = bounds_ref[t + 1]
    px, py = _pixel_coords(t, tiles_x, tile, pf_ref.dtype)

    def body(i, acc):
        f, *_, alpha, _ = _batch_terms(pf_ref, start + i * batch, end, px, py, batch)
        return tuple(a + jnp.sum(alpha * f[6 + k][:, None], axis=0) for k, a in enumerate(acc))

    zero = jnp.zeros((tile * tile,), pf_ref.dtype)
    acc = lax.fori_loop(0, _num_batches(start, end, batch), body, (zero, zero, zero))
    r_ref[...] = acc[0]
    g_ref[...] = acc[1]
    b_ref[...] = acc[2]


def _backward_kernel(bounds_ref, pf_ref, gr_ref, gg_ref, gb_ref, *out_refs, tile, batch,
                     tiles_x):
    """One tile: out_refs[k][slot] <- d loss / d feature k of the pair in that sorted slot."""
    from jax.experimental.pallas import triton as plt  # masked store (GPU and interpret)

    t = pl.program_id(0)
    start = bounds_ref[t]
    end = bounds_ref[t + 1]
    px, py = _pixel_coords(t, tiles_x, tile, pf_ref.dtype)
    cot = (gr_ref[...], gg_ref[...], gb_ref[...])  # [T*T] each

    def body(i, carry):
        off = start + i * batch
        f, dx, dy, u, t, e, v, alpha, keep = _batch_terms(pf_ref, off, end, px, py, batch)
        m = [f[k][:, None] for k in range(2, 6)]
        d_alpha = (cot[0][None, :] * f[6][:, None] + cot[1][None, :] * f[7][:, None]
                   + cot[2][None, :] * f[8][:, None])
        d_color = [jnp.sum(cot[k][None, :] * alpha, axis=1) for k in range(3)]
        # min(1, v) passes half the gradient at v == 1, as jnp.minimum does.
        slope = jnp.where(v < 1.0, 1.0, jnp.where(v == 1.0, 0.5, 0.0))
        d_v = jnp.where(keep, d_alpha * slope, 0.0)
        d_o = jnp.sum(d_v * e, axis=1)
        d_q = -d_v * v
        d_u, d_t = d_q * u, d_q * t
        grads = (
            jnp.sum(d_u * m[0] + d_t * m[2], axis=1),  # x
            jnp.sum(d_u * m[1] + d_t * m[3], axis=1),  # y
            jnp.sum(d_u * dx, axis=1),  # m00
            jnp.sum(d_u * dy, axis=1),  # m01
            jnp.sum(d_t * dx, axis=1),  # m10
            jnp.sum(d_t * dy, axis=1),  # m11
            d_color[0], d_color[1], d_color[2], d_o)
        mask = off + lax.iota(jnp.int32, batch) < end
        for out_ref, val in zip(out_refs, grads):
            plt.store(out_ref.at[pl.ds(off, batch)], val, mask=mask)
        return carry

    lax.fori_loop(0, _num_batches(start, end, batch), body, jnp.int32(0))


def _planar_pair_feats(feats: jax.Array, gid_sorted: jax.Array, batch: int) -> jax.Array:
    """[10, capacity + batch] features of each sorted pair, zero-padded by one batch so that
    every kernel load of `batch` lanes stays in bounds."""
    pf = feats.T[:, gid_sorted]
    return jnp.pad(pf, ((0, 0), (0, batch)))


def _compiler_params(interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plt
    return plt.CompilerParams(num_warps=_NUM_WARPS, num_stages=1)


def _forward(feats, gid, order, bounds, height, width, tile, batch, interpret):
    tiles_y, tiles_x = xla._grid(height, width, tile)
    num_tiles = tiles_y * tiles_x
    pf = _planar_pair_feats(feats, gid[order], batch)
    tile_spec = pl.BlockSpec((None, tile * tile), lambda t: (t, 0))
    out = jax.ShapeDtypeStruct((num_tiles, tile * tile), feats.dtype)
    kernel = functools.partial(_forward_kernel, tile=tile, batch=batch, tiles_x=tiles_x)
    r, g, b = pl.pallas_call(
        kernel, grid=(num_tiles,),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=[tile_spec] * 3, out_shape=[out] * 3,
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="smartsplat_forward")(bounds, pf)
    img = jnp.stack([r, g, b], -1).reshape(tiles_y, tiles_x, tile, tile, 3)
    img = img.transpose(0, 2, 1, 3, 4).reshape(tiles_y * tile, tiles_x * tile, 3)
    return img[:height, :width]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _rasterize(feats, gid, order, bounds, height, width, tile, batch, interpret):
    return _forward(feats, gid, order, bounds, height, width, tile, batch, interpret)


def _rasterize_fwd(feats, gid, order, bounds, height, width, tile, batch, interpret):
    img = _forward(feats, gid, order, bounds, height, width, tile, batch, interpret)
    return img, (feats, gid, order, bounds)


def _rasterize_bwd(height, width, tile, batch, interpret, res, g_img):
    feats, gid, order, bounds = res
    n = feats.shape[0]
    capacity = gid.shape[0]
    tiles_y, tiles_x = xla._grid(height, width, tile)
    num_tiles = tiles_y * tiles_x
    g = jnp.pad(g_img.astype(feats.dtype),
                ((0, tiles_y * tile - height), (0, tiles_x * tile - width), (0, 0)))
    g = g.reshape(tiles_y, tile, tiles_x, tile, 3).transpose(4, 0, 2, 1, 3)
    g = g.reshape(3, num_tiles, tile * tile)
    pf = _planar_pair_feats(feats, gid[order], batch)
    tile_spec = pl.BlockSpec((None, tile * tile), lambda t: (t, 0))
    kernel = functools.partial(_backward_kernel, tile=tile, batch=batch, tiles_x=tiles_x)
    pair_grads = pl.pallas_call(
        kernel, grid=(num_tiles,),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)]
        + [tile_spec] * 3,
        out_specs=[pl.BlockSpec(memory_space=pl.ANY)] * NF,
        out_shape=[jax.ShapeDtypeStruct((capacity + batch,), feats.dtype)] * NF,
        interpret=interpret, compiler_params=_compiler_params(interpret),
        name="smartsplat_backward")(bounds, pf, g[0], g[1], g[2])
    # Sorted slot j holds Gaussian-major pair order[j]; slots past the real pairs were never
    # written (undefined on a GPU) and are zeroed before the reduction.
    num_pairs = bounds[-1]
    slot_ok = jnp.arange(capacity, dtype=jnp.int32) < num_pairs
    pair_grads = jnp.stack(pair_grads)[:, :capacity]
    pair_grads = jnp.where(slot_ok[None, :], pair_grads, 0.0)
    gm = jnp.zeros((NF, capacity), feats.dtype).at[:, order].set(pair_grads,
                                                                 unique_indices=True)
    grad = jax.ops.segment_sum(gm.T, gid, num_segments=n, indices_are_sorted=True)
    return grad, None, None, None


_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)


def default_capacity(num_gaussians: int, height: int, width: int,
                     tile: int = DEFAULT_TILE) -> int:
    """Pair capacity used when none is given and the pair count is unknown (inside `jit`).

    8 tiles per Gaussian, plus one per tile, rounded up to a power of two: SmartSplat's
    Gaussians cover a few pixels to a few tens of pixels, i.e. 1 to 4 tiles of 16 pixels.
    A scene with more pairs still renders correctly, through the `xla` fallback.
    """
    tiles_y, tiles_x = xla._grid(height, width, tile)
    want = 8 * max(num_gaussians, 1) + tiles_y * tiles_x
    return int(min(_MAX_CAPACITY, max(_MIN_CAPACITY, 1 << math.ceil(math.log2(want)))))


def pair_capacity(params: P.GaussianParams, height: int, width: int,
                  tile: int = DEFAULT_TILE, headroom: float = 1.25) -> int:
    """A power-of-two capacity >= headroom x the scene's actual pair count (call outside jit).

    Buckets keep recompilations rare while the Gaussians move during training.
    """
    count = xla.pair_count(params, height, width, tile)
    want = max(int(math.ceil(count * headroom)), _MIN_CAPACITY)
    if want > _MAX_CAPACITY:
        raise ValueError(f"the scene has {count} (tile, Gaussian) pairs at tile={tile}; "
                         f"the pallas backend handles at most {_MAX_CAPACITY}")
    return 1 << math.ceil(math.log2(want))


def render_pallas(params: P.GaussianParams, height: int, width: int, *,
                  tile: int = DEFAULT_TILE, batch: int = DEFAULT_BATCH,
                  capacity: int | None = None, interpret: bool | None = None,
                  clamp: bool = True) -> jax.Array:
    """Renders [H, W, 3] with the Pallas kernels (see module docstring).

    Args:
      params: raw Gaussian parameters, N rows.
      height, width: output size in pixels (static).
      tile: tile side in pixels, a power of two (static).
      batch: pairs per inner-loop step, a power of two (static).
      capacity: length of the pair list (static); None: `default_capacity`. Scenes with more
        pairs fall back to the `xla` rasterizer (same image, slower).
      interpret: run the kernels in the Pallas interpreter; None: unless on a GPU.
      clamp: clamp the sum to [0, 1] (the definition).
    """
    _check_static(tile, batch, capacity)
    n = params.means.shape[0]
    if n == 0:  # static: nothing to draw
        return jnp.zeros((height, width, 3), params.colors.dtype) + 0.0 * jnp.sum(params.colors)
    capacity = default_capacity(n, height, width, tile) if capacity is None else capacity
    interpret = _interpret_default() if interpret is None else bool(interpret)
    proj = xla.project(params, height, width, tile)
    total = jnp.sum(proj.counts)

    def kernels(params, proj):
        del params
        binning = bin_pairs(proj, height, width, tile, capacity)
        return _rasterize(proj.feats, binning.gid, binning.order, binning.bounds, height,
                          width, tile, batch, interpret)

    def fallback(params, proj):
        del proj
        return xla.render_xla(params, height, width, clamp=False)

    img = lax.cond(total <= capacity, kernels, fallback, params, proj)
    return jnp.clip(img, 0.0, 1.0) if clamp else img
