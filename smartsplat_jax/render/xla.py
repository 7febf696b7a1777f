"""Tiled rasterizer in plain XLA: tile binning, chunked pair evaluation, segment sums.

Algorithm (SPEC §3, accumulated sum, no sorting by depth):
  1. `project`: raw params -> per-Gaussian features [N, 10] = (x_pix, y_pix, whitening
     m00, m01, m10, m11, r, g, b, opacity) and the inclusive tile range [tx0, tx1] x
     [ty0, ty1] of the exact axis-aligned bounding box of the ellipse where alpha >= 1/255
     (half-extents sqrt(2 ln(255 o) Sigma_xx), sqrt(2 ln(255 o) Sigma_yy), widened by a small
     margin against rounding). This is a superset of the pixels the definition keeps, and
     tighter than the circle of SPEC §3 for elongated Gaussians. Gaussians with opacity
     <= 1/255, non-finite values or no pixel in the image get an empty range and contribute
     nothing.
     The whitening M = S^-1 R^T (rows (cos, sin) / s_x and (-sin, cos) / s_y) gives
     sigma(d) = 0.5 |M d|^2 = 0.5 d^T Sigma^-1 d as a sum of two squares: never negative and
     free of the cancellation of the conic form 0.5 (a dx^2 + c dy^2) + b dx dy, which for a
     needle-thin Gaussian (s_x = 1e-4 px, s_y = 8 px) comes out near -256 in float32 where
     the exact value is +18.5, so exp(-sigma) overflowed and 0 * inf poisoned the gradients.
     With scales floored at `params.SCALE_FLOOR`, every entry of M is at most 64 / px, so
     the forward and the backward are finite for every finite parameter set.
  2. Pairs (tile, Gaussian) are enumerated implicitly in Gaussian-major order: pair k belongs
     to Gaussian g = searchsorted(cumsum(counts), k) and to the (k - start_g)-th tile of its
     range. Nothing of size "all pairs" is ever built: pairs are processed in chunks of
     `chunk` pairs inside a `while_loop` whose trip count, ceil(total_pairs / chunk), is
     dynamic. So the pair count never overflows a capacity, never drops a contribution, and a
     change in the pair count never recompiles.
  3. Each chunk evaluates its pairs over the tile's T x T pixels ([chunk, T*T] alphas) and
     adds alpha * colour into the tile image with a segment sum (a scatter-add into the
     [num_tiles, T*T, 3] accumulator carried by the loop).
  4. Backward (`jax.custom_vjp`): the same chunks are re-enumerated; each pair gathers its
     tile's cotangent, the per-pair evaluation is differentiated by `jax.vjp`, and the
     per-pair feature gradients are reduced with a sorted segment sum over Gaussian ids
     (pairs are in Gaussian-major order, so the ids are sorted). Deterministic given the
     backend's scatter; no residual beyond the features, the ranges and the image.
  5. The feature gradients flow back to the raw parameters through `project` by autodiff.

Limits: pair indices are int32, so one render handles at most 2^31 - 1 (tile, Gaussian)
pairs (a 16K image at CR 50 with SmartSplat-like scales has about 1.5e7 at T = 4).

Memory model (float32): besides the parameters (~44 bytes per Gaussian) and O(N) projection
arrays, the peak is the tile image accumulator (4 * 3 * H_pad * W_pad bytes; H_pad, W_pad =
H, W rounded up to the tile) plus per-chunk temporaries of about
`chunk * T*T * 4 bytes * ~12` (alphas, masks, contributions and their cotangents). With the
default CPU chunk of 2^11 pairs and T = 8 that is ~6 MB per chunk (2^16 on GPU: ~200 MB),
independent of image size and N. The backward adds the cotangent image and an [N, 10]
gradient accumulator. A 16K x 16K
image therefore needs 3.2 GB for the image, 3.2 GB for its cotangent, plus ~100 MB.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P

__all__ = ["DEFAULT_TILE", "default_chunk", "Projection", "Window", "project", "render_xla",
           "pair_count"]

ALPHA_MIN = 1.0 / 255.0
NUM_FEATURES = 10  # x, y, whitening m00, m01, m10, m11, r, g, b, opacity
# Relative and absolute widening of the bounding box, in pixels, against float rounding.
_BOX_REL = 1e-4
_BOX_ABS = 1e-2

# Measured on a 2-core CPU, forward+backward inside a scan of steps (as training runs it),
# minimum of 4, in ms (pairs at T = 4 / 8):
#   768x512 CR 20, the photo's initialization (227k / 77k):  T4 chunk 8192 60.4;
#     T8 chunk 512 52.1, 1024 47.1, 2048 39.8;  T16 chunk 512 54.0
#   the same after 1,000 training steps (495k / 151k):  T4 chunk 4096 131.6, 8192 127.1;
#     T8 chunk 1024 81.0, 2048 70.2, 4096 78.2
#   synthetic scenes (`render.auto.synthetic_scene`): 768x512 CR 20 T4 13.9, T8 12.1;
#     2048x1365 CR 50 T4 114.2, T8 117.3
# Trained Gaussians grow, and larger tiles cost fewer pairs per pixel covered.
# (Sorting each chunk by tile before the scatter, `sort_pairs`: +5 to +7 ms at T = 4.)
DEFAULT_TILE = 8
_CPU_CHUNK = 1 << 11
# On accelerators each loop step costs a few kernel launches, so steps are made larger
# (~50 MB per [chunk, T*T] float32 temporary at T = 8). Not yet measured on a GPU.
_ACCELERATOR_CHUNK = 1 << 16


def default_chunk() -> int:
    """Pairs per loop step for the default backend: 2048 on CPU, 2^16 on GPU/TPU."""
    return _CPU_CHUNK if jax.default_backend() == "cpu" else _ACCELERATOR_CHUNK

class Projection(NamedTuple):
    """Per-Gaussian data for the rasterizer.

    Attributes:
      feats: [N, 10] float: pixel centre (x, y), whitening (m00, m01, m10, m11) in 1/px
        with u = m00 dx + m01 dy, t = m10 dx + m11 dy and sigma(d) = 0.5 (u^2 + t^2),
        colour (r, g, b), opacity.
      tx0, ty0: [N] int32, first tile column / row of the Gaussian's box.
      wx: [N] int32, number of tile columns of the box.
      counts: [N] int32, number of tiles of the box (0: contributes nothing).
    """

    feats: jax.Array
    tx0: jax.Array
    ty0: jax.Array
    wx: jax.Array
    counts: jax.Array

class Window(NamedTuple):
    """A height x width window of a larger image_height x image_width image, its first pixel
    at row `top`, column `left` of the image (Python ints or traced int32 scalars; the
    window may reach beyond the image's edges).

    Rendering a window draws exactly the pixels the whole image would have there: the
    Gaussians stay in the image's pixel frame (their means normalized to the image), the
    window's pixel centres are the image's integer coordinates, so every pixel offset
    mu - p, every alpha and every threshold decision is the whole render's, bit for bit.
    Shifting the means into the window's frame instead re-rounds them (by up to 6e-5 px at
    1024 px) and flips alpha >= 1/255 decisions at a few pixels, which changed some
    Gaussians' float32 gradients by 10 %.
    """
    image_height: int
    image_width: int
    top: object = 0
    left: object = 0

    def offset(self) -> jax.Array:
        """[2] int32 (x, y) image coordinates of the window's first pixel."""
        return jnp.stack([jnp.asarray(self.left, jnp.int32), jnp.asarray(self.top, jnp.int32)])


def project(params: P.GaussianParams, height: int, width: int,
            tile: int = DEFAULT_TILE, window: Window | None = None) -> Projection:
    """Projects raw parameters (`GaussianParams`, or `CholeskyParams` whose whitening is
    L^-1 directly) to rasterizer features and tile ranges (see module docstring).

    With a `window`, the means are normalized to the window's image and the features hold
    image pixel coordinates; the tile ranges are those of the height x width window."""
    image_h, image_w = (height, width) if window is None else (window.image_height,
                                                               window.image_width)
    mu = P.normalized_to_pixel(params.means, image_h, image_w)  # [N, 2] image pixels
    opacity = params.opacity[:, 0]
    valid = (opacity > ALPHA_MIN) & jnp.isfinite(opacity) & jnp.all(jnp.isfinite(mu), -1)
    valid &= jnp.all(jnp.isfinite(params.colors), -1)
    if isinstance(params, P.CholeskyParams):
        # Sigma = L L^T, so M = L^-1 = [[1/l11, 0], [-l21/(l11 l22), 1/l22]] whitens.
        valid &= jnp.all(jnp.isfinite(params.cholesky), -1)
        safe = jnp.where(valid[:, None], params.cholesky, jnp.asarray([1.0, 0.0, 1.0]))
        l11, l21, l22 = P.cholesky_factor(safe)
        whiten = jnp.stack([1.0 / l11, jnp.zeros_like(l11), -l21 / (l11 * l22), 1.0 / l22], -1)
        l11, l21, l22 = (jax.lax.stop_gradient(v) for v in (l11, l21, l22))
        var_x, var_y = l11 * l11, l21 * l21 + l22 * l22  # Sigma_xx, Sigma_yy
    else:
        s = P.scale_activation(params.scales)
        theta = P.rotation_angle(params.rotation)[:, 0]
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        valid &= (s[:, 0] > 0) & (s[:, 1] > 0) & jnp.all(jnp.isfinite(s), -1)
        valid &= jnp.isfinite(theta)
        # Whitening M = S^-1 R^T (see the module docstring): sigma = 0.5 |M d|^2 >= 0.
        safe_s = jnp.where(valid[:, None], s, 1.0)
        ix, iy = 1.0 / safe_s[:, 0], 1.0 / safe_s[:, 1]
        whiten = jnp.stack([cos * ix, sin * ix, -sin * iy, cos * iy], -1)
        sx2 = jax.lax.stop_gradient(safe_s[:, 0] ** 2)
        sy2 = jax.lax.stop_gradient(safe_s[:, 1] ** 2)
        cs2 = jax.lax.stop_gradient(cos * cos)
        sn2 = jax.lax.stop_gradient(sin * sin)
        var_x = cs2 * sx2 + sn2 * sy2  # Sigma_xx
        var_y = sn2 * sx2 + cs2 * sy2  # Sigma_yy
    feats = jnp.concatenate([mu, whiten, params.colors, opacity[:, None]], axis=-1)
    feats = jnp.where(valid[:, None], feats, 0.0)

    # Integer tile ranges (not differentiated), in the rendered frame (a window's shift
    # rounds by far less than the box's absolute margin).
    mu_c = jax.lax.stop_gradient(mu)
    if window is not None:
        mu_c = mu_c - window.offset().astype(mu_c.dtype)
    tau = 2.0 * jnp.log(jnp.maximum(255.0 * jax.lax.stop_gradient(opacity), 1.0))
    ex = jnp.sqrt(tau * var_x) * (1.0 + _BOX_REL) + _BOX_ABS
    ey = jnp.sqrt(tau * var_y) * (1.0 + _BOX_REL) + _BOX_ABS
    # Clip in float before converting, so far-away or huge boxes cannot overflow int32.
    x0 = jnp.clip(jnp.ceil(mu_c[:, 0] - ex), -1.0, width)
    x1 = jnp.clip(jnp.floor(mu_c[:, 0] + ex), -1.0, width)
    y0 = jnp.clip(jnp.ceil(mu_c[:, 1] - ey), -1.0, height)
    y1 = jnp.clip(jnp.floor(mu_c[:, 1] + ey), -1.0, height)
    nonempty = valid & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1) \
        & (x0 <= x1) & (y0 <= y1)
    x0 = jnp.clip(x0, 0, width - 1).astype(jnp.int32)
    x1 = jnp.clip(x1, 0, width - 1).astype(jnp.int32)
    y0 = jnp.clip(y0, 0, height - 1).astype(jnp.int32)
    y1 = jnp.clip(y1, 0, height - 1).astype(jnp.int32)
    tx0, tx1 = x0 // tile, x1 // tile
    ty0, ty1 = y0 // tile, y1 // tile
    wx = tx1 - tx0 + 1
    counts = jnp.where(nonempty, wx * (ty1 - ty0 + 1), 0).astype(jnp.int32)
    return Projection(feats=feats, tx0=tx0, ty0=ty0, wx=wx, counts=counts)

def _grid(height: int, width: int, tile: int) -> tuple[int, int]:
    return -(-height // tile), -(-width // tile)

def _enumerate_chunk(proj: Projection, ends: jax.Array, start: jax.Array, total: jax.Array,
                     chunk: int, tiles_x: int, num_tiles: int):
    """Pairs [start, start + chunk) of the Gaussian-major enumeration.

    Returns:
      gid: [chunk] int32 Gaussian index (sorted ascending; N - 1 for padding slots).
      tid: [chunk] int32 tile index (num_tiles for padding slots).
      ok: [chunk] bool, the slot is a real pair.
    """
    n = proj.counts.shape[0]
    k = start + jnp.arange(chunk, dtype=jnp.int32)
    ok = k < total
    gid = jnp.minimum(jnp.searchsorted(ends, k, side="right").astype(jnp.int32), n - 1)
    local = k - (ends[gid] - proj.counts[gid])
    wx = jnp.maximum(proj.wx[gid], 1)
    tx = proj.tx0[gid] + local % wx
    ty = proj.ty0[gid] + local // wx
    tid = jnp.where(ok, ty * tiles_x + tx, num_tiles).astype(jnp.int32)
    return gid, tid, ok

def _pair_terms(f: jax.Array, origin: jax.Array, tile: int):
    """Per-pair pixel offsets, whitened offsets and kept alphas over the tile's T*T pixels.

    Args:
      f: [chunk, 10] features of each pair's Gaussian.
      origin: [chunk, 2] float pixel coordinates (x, y) of each pair's tile corner.

    Returns:
      dx, dy: [chunk, T*T] mu - p in pixels (pixel index = row * T + col within the tile).
      u, t: [chunk, T*T] M (dx, dy): sigma = 0.5 (u^2 + t^2) >= 0.
      e: [chunk, T*T] exp(-sigma), in [0, 1].
      v: [chunk, T*T] o * exp(-sigma), before the min with 1.
      alpha: [chunk, T*T] the kept alpha (0 where dropped by SPEC §3).
      keep: [chunk, T*T] bool.
    """
    ly, lx = jnp.divmod(jnp.arange(tile * tile), tile)
    dx = f[:, 0:1] - (origin[:, 0:1] + lx.astype(f.dtype))
    dy = f[:, 1:2] - (origin[:, 1:2] + ly.astype(f.dtype))
    u = f[:, 2:3] * dx + f[:, 3:4] * dy
    t = f[:, 4:5] * dx + f[:, 5:6] * dy
    e = jnp.exp(-0.5 * (u * u + t * t))
    v = f[:, 9:10] * e
    alpha = jnp.minimum(1.0, v)
    keep = alpha >= ALPHA_MIN
    return dx, dy, u, t, e, v, jnp.where(keep, alpha, 0.0), keep

def _pair_contrib(f: jax.Array, origin: jax.Array, tile: int) -> jax.Array:
    """[chunk, T*T, 3] alpha * colour of each pair over its tile's pixels."""
    alpha = _pair_terms(f, origin, tile)[6]
    return alpha[:, :, None] * f[:, None, 6:9]

def color_dot(cot: jax.Array, colors: jax.Array) -> jax.Array:
    """[chunk, T*T] sum over the channels of cot [chunk, T*T, 3] times colors [chunk, 3].

    Written out over the 3 channels rather than as an einsum: XLA's CPU backend runs an
    einsum with a batch axis of `chunk` as thousands of tiny matrix products (measured 17 of
    72 ms of a 768x512 forward+backward), while this form fuses with the elementwise work
    around it."""
    return sum(cot[:, :, c] * colors[:, c:c + 1] for c in range(3))


def _pair_contrib_vjp(f: jax.Array, origin: jax.Array, cot: jax.Array, tile: int) -> jax.Array:
    """Gradient of sum(cot * _pair_contrib(f, origin)) with respect to f: [chunk, 10].

    Hand-derived (fewer passes over [chunk, T*T] than autodiff); min(1, v) passes half the
    gradient at v == 1, as jax.numpy.minimum does, so both backends agree exactly. Every
    factor is finite (e <= 1; |u|, |t| <= 64 |d| / px by the scale floor), so dropped pixels
    contribute exactly 0.
    """
    dx, dy, u, t, e, v, alpha, keep = _pair_terms(f, origin, tile)
    d_alpha = color_dot(cot, f[:, 6:9])  # [chunk, T*T]
    slope = jnp.where(v < 1.0, 1.0, jnp.where(v == 1.0, 0.5, 0.0))
    d_v = jnp.where(keep, d_alpha * slope, 0.0)
    d_q = -d_v * v
    d_u, d_t = d_q * u, d_q * t
    # The per-pixel terms of all 10 feature gradients, summed over the tile's pixels in one
    # reduction (ten separate reductions measured 1.8x as slow on CPU).
    terms = jnp.stack([d_u * f[:, 2:3] + d_t * f[:, 4:5], d_u * f[:, 3:4] + d_t * f[:, 5:6],
                       d_u * dx, d_u * dy, d_t * dx, d_t * dy,
                       *(cot[:, :, c] * alpha for c in range(3)), d_v * e], axis=1)
    return jnp.sum(terms, axis=2)  # [chunk, 10]

def _tile_origins(tid: jax.Array, tiles_x: int, tile: int, dtype,
                  offset: jax.Array | None = None) -> jax.Array:
    """[..., 2] pixel coordinates (x, y) of the tiles' first pixels, shifted by `offset`
    ([2] int32, a window's first pixel; None: 0). Integers, so exact in float."""
    ty, tx = jnp.divmod(tid, tiles_x)
    xy = jnp.stack([tx * tile, ty * tile], -1)
    return (xy if offset is None else xy + offset).astype(dtype)

@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _rasterize(feats, tx0, ty0, wx, counts, offset, height, width, tile, chunk, sort_pairs):
    return _rasterize_fwd(feats, tx0, ty0, wx, counts, offset, height, width, tile, chunk,
                          sort_pairs)[0]

def _rasterize_fwd(feats, tx0, ty0, wx, counts, offset, height, width, tile, chunk,
                   sort_pairs):
    proj = Projection(feats, tx0, ty0, wx, counts)
    tiles_y, tiles_x = _grid(height, width, tile)
    num_tiles = tiles_y * tiles_x
    ends = jnp.cumsum(counts)
    total = ends[-1]
    num_chunks = (total + chunk - 1) // chunk

    def body(i, acc):
        gid, tid, ok = _enumerate_chunk(proj, ends, i * chunk, total, chunk, tiles_x, num_tiles)
        if sort_pairs:
            tid, gid = jax.lax.sort((tid, gid), num_keys=1)
        origin = _tile_origins(tid, tiles_x, tile, feats.dtype, offset)
        contrib = _pair_contrib(feats[gid], origin, tile)
        return acc.at[tid].add(contrib, mode="drop", indices_are_sorted=sort_pairs)

    acc = jnp.zeros((num_tiles, tile * tile, 3), feats.dtype)
    acc = jax.lax.fori_loop(0, num_chunks, body, acc)
    img = acc.reshape(tiles_y, tiles_x, tile, tile, 3).transpose(0, 2, 1, 3, 4)
    img = img.reshape(tiles_y * tile, tiles_x * tile, 3)[:height, :width]
    return img, (feats, tx0, ty0, wx, counts, offset)

def _rasterize_bwd(height, width, tile, chunk, sort_pairs, res, g_img):
    del sort_pairs
    feats, tx0, ty0, wx, counts, offset = res
    proj = Projection(feats, tx0, ty0, wx, counts)
    tiles_y, tiles_x = _grid(height, width, tile)
    num_tiles = tiles_y * tiles_x
    n = feats.shape[0]
    g = jnp.pad(g_img, ((0, tiles_y * tile - height), (0, tiles_x * tile - width), (0, 0)))
    g = g.reshape(tiles_y, tile, tiles_x, tile, 3).transpose(0, 2, 1, 3, 4)
    g = g.reshape(num_tiles, tile * tile, 3)
    ends = jnp.cumsum(counts)
    total = ends[-1]
    num_chunks = (total + chunk - 1) // chunk

    def body(i, grad):
        gid, tid, ok = _enumerate_chunk(proj, ends, i * chunk, total, chunk, tiles_x, num_tiles)
        cot = jnp.where(ok[:, None, None], g[jnp.minimum(tid, num_tiles - 1)], 0.0)
        origin = _tile_origins(tid, tiles_x, tile, feats.dtype, offset)
        df = _pair_contrib_vjp(feats[gid], origin, cot, tile)
        return grad + jax.ops.segment_sum(df, gid, num_segments=n, indices_are_sorted=True)

    grad = jax.lax.fori_loop(0, num_chunks, body, jnp.zeros_like(feats))
    return grad, None, None, None, None, None

_rasterize.defvjp(_rasterize_fwd, _rasterize_bwd)

def render_xla(params: P.GaussianParams, height: int, width: int, *, tile: int = DEFAULT_TILE,
               chunk: int | None = None, sort_pairs: bool = False,
               clamp: bool = True, window: Window | None = None) -> jax.Array:
    """Renders [H, W, 3] with the tiled XLA rasterizer (see module docstring).

    Args:
      params: raw Gaussian parameters, N rows.
      height, width: output size in pixels (static).
      window: None, the whole image; or a `Window` of a larger image (its size static, its
        position may be traced): the height x width pixels of that image's render there.
      tile: tile side in pixels (static).
      chunk: pairs evaluated per loop iteration (static); bounds the memory, never the count.
        None: `default_chunk()`.
      sort_pairs: sort each chunk by tile before the scatter (static).
      clamp: clamp the sum to [0, 1] (the definition).
    """
    if params.means.shape[0] == 0:  # static: nothing to draw
        return jnp.zeros((height, width, 3), params.colors.dtype) + 0.0 * jnp.sum(params.colors)
    for name, v in (("tile", tile), ("chunk", chunk)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}={v!r} must be a positive integer")
    chunk = default_chunk() if chunk is None else chunk
    proj = project(params, height, width, tile, window)
    offset = jnp.zeros((2,), jnp.int32) if window is None else window.offset()
    img = _rasterize(proj.feats, proj.tx0, proj.ty0, proj.wx, proj.counts, offset, height,
                     width, tile, chunk, sort_pairs)
    return jnp.clip(img, 0.0, 1.0) if clamp else img

@functools.partial(jax.jit, static_argnames=("height", "width", "tile"))
def _pair_total(params: P.GaussianParams, height: int, width: int, tile: int) -> jax.Array:
    return jnp.sum(project(params, height, width, tile).counts.astype(jnp.float32))


def pair_count(params: P.GaussianParams, height: int, width: int,
               tile: int = DEFAULT_TILE) -> int:
    """Number of (tile, Gaussian) pairs the rasterizer evaluates for these parameters.

    Compiled once per (N, height, width, tile): the training loop calls it between chunks."""
    return int(_pair_total(params, height, width, tile))
