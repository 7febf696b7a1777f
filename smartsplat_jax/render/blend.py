"""Front-to-back alpha blending of ordered Gaussians: the 3DGS baseline's compositing (Kerbl
et al., SIGGRAPH 2023, Eq. 3 and its CUDA rasterizer), in the tile framework of `render.xla`.

SmartSplat and GaussianImage add their Gaussians (SPEC §3); 3DGS, as the paper evaluates it on
images, blends them in depth order. Here the order is the parameters' row order (sort them by
depth first): Gaussian 0 is in front. At a pixel p, with

  alpha_i(p) = min(0.99, o_i exp(-sigma_i(p))), dropped (0) below 1/255,
  T_i(p) = prod_{j < i} (1 - alpha_j(p))         (transmittance in front of i),
  C(p) = sum_i m_i(p) c_i alpha_i(p) T_i(p) + b T_end(p),   T_end = prod_{kept j} (1 - alpha_j),

where m_i(p) = [T_i(p) (1 - alpha_i(p)) >= 1e-4] is 3DGS's early termination: a Gaussian
that would take the transmittance below 1e-4 and every one behind it are skipped (T is
non-increasing, so the kept ones are a prefix), and b is the background grey level, white
(`BACKGROUND` = 1) as GaussianImage ran its 3DGS baseline (`background = ones(3)`). sigma_i
is the whitened form of `xla.project`, so needle-thin Gaussians stay finite here too.

Algorithm. Pairs (tile, Gaussian) are enumerated Gaussian-major as in `render.xla`, so each
tile meets its Gaussians front to back across the chunks. A chunk's pairs are stably sorted
by tile; within each tile's run, the log-transmittance sum log(1 - alpha) is scanned
(a segmented associative scan: exact, no differences of large prefix sums) and added to the
tile's carried log-transmittance [num_tiles, T*T]; the contributions are scattered into the
tile image, the run's totals into the carry, the kept pairs' also into log T_end.

Backward (`jax.custom_vjp`), in the same front-to-back order: re-enumerating the chunks gives
T_i and the colour accumulated up to and including i, C_<=i; the colour behind i,
background included, is S_i = C - C_<=i, and

  dC/dc_i = m_i alpha_i T_i,    dC/dalpha_i = m_i c_i T_i - S_i / (1 - alpha_i)

(the mask and the order are piecewise constant: no gradient). The per-pair alpha is
differentiated with `jax.vjp`, and the feature gradients are reduced by Gaussian as in
`render.xla`. Memory: the forward carries the tile image, the log-transmittance and log T_end (20 bytes
per padded pixel); the backward also the cotangent, the partial colours and the gradient
accumulator, plus per-chunk temporaries of about chunk * T*T * 4 bytes * ~20.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P
from smartsplat_jax.render import xla as X
from smartsplat_jax.render.reference import MAX_DENSE_ELEMENTS, render_reference

__all__ = ["ALPHA_MAX", "T_MIN", "BACKGROUND", "render_blend", "render_blend_reference"]

ALPHA_MAX = 0.99  # 3DGS clamps alpha here, so 1 - alpha never vanishes
T_MIN = 1e-4  # 3DGS stops blending a pixel before its transmittance falls below this
BACKGROUND = 1.0  # white, GaussianImage's 3DGS baseline (gaussiansplatting_3d.py)


@functools.partial(jax.jit, static_argnames=("height", "width", "clamp", "background"))
def render_blend_reference(params: P.GaussianParams | P.CholeskyParams, height: int,
                           width: int, clamp: bool = True,
                           background: float = BACKGROUND) -> jax.Array:
    """Dense blending render, [H, W, 3]: every Gaussian at every pixel, in row order, over a
    `background` grey level (the definition in the module docstring, written for clarity;
    the test oracle). Jitted like `render_reference`: height, width, clamp and background
    static."""
    n = params.means.shape[0]
    if n * height * width > MAX_DENSE_ELEMENTS:
        raise ValueError(f"dense blending: N * pixels = {n} * {height * width} is over "
                         f"{MAX_DENSE_ELEMENTS}; use render_blend")
    if n == 0:
        return jnp.full((height, width, 3), background, params.colors.dtype)
    # Each Gaussian's alpha from the dense sum renderer (alone, colour 1, no clamp):
    # min(1, o exp(-sigma)), 0 below 1/255.
    rows = jax.tree_util.tree_map(lambda a: a[:, None], params)
    rows = rows.replace(colors=jnp.ones_like(rows.colors))
    alphas = jax.vmap(lambda p: render_reference(p, height, width, clamp=False)[..., 0])(rows)
    alpha = jnp.minimum(alphas, ALPHA_MAX)  # [N, H, W]
    trans = jnp.cumprod(1.0 - alpha, axis=0)  # after each Gaussian
    before = jnp.concatenate([jnp.ones_like(trans[:1]), trans[:-1]], axis=0)
    keep = jax.lax.stop_gradient(trans) >= T_MIN
    weight = jnp.where(keep, alpha * before, 0.0)
    img = jnp.einsum("nhw,nc->hwc", weight, params.colors, precision="highest")
    t_end = jnp.prod(jnp.where(keep, 1.0 - alpha, 1.0), axis=0)
    img = img + background * t_end[..., None]
    return jnp.clip(img, 0.0, 1.0) if clamp else img


def _alpha(f: jax.Array, origin: jax.Array, tile: int) -> jax.Array:
    """[chunk, T*T] blending alphas of each pair over its tile: min(0.99, o exp(-sigma)),
    0 below 1/255."""
    *_, v, _, keep = X._pair_terms(f, origin, tile)
    return jnp.where(keep, jnp.minimum(v, ALPHA_MAX), 0.0)


def _segment_scan(values: jax.Array, starts: jax.Array) -> jax.Array:
    """Inclusive cumulative sums of `values` [P, ...] along axis 0, restarting where
    `starts` [P] is True."""

    def op(a, b):
        fa, va = a
        fb, vb = b
        return fa | fb, jnp.where(fb.reshape(fb.shape + (1,) * (vb.ndim - 1)), vb, va + vb)

    return jax.lax.associative_scan(op, (starts, values))[1]


def _chunk_terms(feats, proj, ends, total, i, chunk, tiles_x, num_tiles, tile, log_t):
    """One chunk of pairs, sorted by tile (front to back within a tile), with what both
    passes need: (gid, tid, ok, f, origin, alpha, t_before, mask, run starts)."""
    gid, tid, ok = X._enumerate_chunk(proj, ends, i * chunk, total, chunk, tiles_x, num_tiles)
    tid, gid, ok = jax.lax.sort((tid, gid, ok), num_keys=2)  # by tile, then by depth
    f = feats[gid]
    origin = X._tile_origins(tid, tiles_x, tile, feats.dtype)
    alpha = jnp.where(ok[:, None], _alpha(f, origin, tile), 0.0)
    log1m = jnp.log1p(-alpha)
    starts = jnp.concatenate([jnp.ones((1,), bool), tid[1:] != tid[:-1]])
    after = _segment_scan(log1m, starts) + log_t[jnp.minimum(tid, num_tiles - 1)]
    t_before = jnp.exp(after - log1m)
    mask = ok[:, None] & (jnp.exp(after) >= T_MIN)
    return gid, tid, ok, f, origin, alpha, t_before, mask, starts, log1m


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _blend(feats, tx0, ty0, wx, counts, height, width, tile, chunk, background):
    return _blend_fwd(feats, tx0, ty0, wx, counts, height, width, tile, chunk, background)[0]


def _setup(counts, height, width, tile, chunk):
    tiles_y, tiles_x = X._grid(height, width, tile)
    ends = jnp.cumsum(counts)
    total = ends[-1]
    return tiles_y, tiles_x, tiles_y * tiles_x, ends, total, (total + chunk - 1) // chunk


def _to_image(acc, tiles_y, tiles_x, tile, height, width):
    img = acc.reshape(tiles_y, tiles_x, tile, tile, -1).transpose(0, 2, 1, 3, 4)
    return img.reshape(tiles_y * tile, tiles_x * tile, -1)[:height, :width]


def _blend_fwd(feats, tx0, ty0, wx, counts, height, width, tile, chunk, background):
    proj = X.Projection(feats, tx0, ty0, wx, counts)
    tiles_y, tiles_x, num_tiles, ends, total, num_chunks = _setup(counts, height, width, tile,
                                                                  chunk)

    def body(i, carry):
        acc, log_t, log_end = carry
        gid, tid, ok, f, _, alpha, t_before, mask, _, log1m = _chunk_terms(
            feats, proj, ends, total, i, chunk, tiles_x, num_tiles, tile, log_t)
        weight = jnp.where(mask, alpha * t_before, 0.0)
        acc = acc.at[tid].add(weight[:, :, None] * f[:, None, 6:9], mode="drop")
        log_t = log_t.at[tid].add(log1m, mode="drop")
        log_end = log_end.at[tid].add(jnp.where(mask, log1m, 0.0), mode="drop")
        return acc, log_t, log_end

    acc = jnp.zeros((num_tiles, tile * tile, 3), feats.dtype)
    log_t = jnp.zeros((num_tiles, tile * tile), feats.dtype)
    acc, _, log_end = jax.lax.fori_loop(0, num_chunks, body, (acc, log_t, log_t))
    final = acc + background * jnp.exp(log_end)[..., None]  # C, background included
    img = _to_image(final, tiles_y, tiles_x, tile, height, width)
    return img, (feats, tx0, ty0, wx, counts, final)


def _blend_bwd(height, width, tile, chunk, background, res, g_img):
    feats, tx0, ty0, wx, counts, final = res
    proj = X.Projection(feats, tx0, ty0, wx, counts)
    tiles_y, tiles_x, num_tiles, ends, total, num_chunks = _setup(counts, height, width, tile,
                                                                  chunk)
    n = feats.shape[0]
    g = jnp.pad(g_img, ((0, tiles_y * tile - height), (0, tiles_x * tile - width), (0, 0)))
    g = g.reshape(tiles_y, tile, tiles_x, tile, 3).transpose(0, 2, 1, 3, 4)
    g = g.reshape(num_tiles, tile * tile, 3)

    def body(i, carry):
        grad, log_t, partial = carry
        gid, tid, ok, f, origin, alpha, t_before, mask, starts, log1m = _chunk_terms(
            feats, proj, ends, total, i, chunk, tiles_x, num_tiles, tile, log_t)
        safe = jnp.minimum(tid, num_tiles - 1)
        weight = jnp.where(mask, alpha * t_before, 0.0)
        contrib = weight[:, :, None] * f[:, None, 6:9]  # [chunk, T*T, 3]
        upto = _segment_scan(contrib, starts) + partial[safe]  # C_<=i
        behind = final[safe] - upto  # S_i (the background's share included)
        cot = jnp.where(ok[:, None, None], g[safe], 0.0)
        d_color = jnp.sum(cot * weight[:, :, None], axis=1)  # [chunk, 3]
        d_alpha = jnp.where(mask, X.color_dot(cot, f[:, 6:9]) * t_before
                            - jnp.sum(cot * behind, -1) / (1.0 - alpha), 0.0)
        _, vjp = jax.vjp(lambda x: _alpha(x, origin, tile), f)
        (df,) = vjp(d_alpha)
        df = df.at[:, 6:9].add(d_color)
        grad = grad + jax.ops.segment_sum(df, gid, num_segments=n)
        log_t = log_t.at[tid].add(log1m, mode="drop")
        partial = partial.at[tid].add(contrib, mode="drop")
        return grad, log_t, partial

    carry = (jnp.zeros_like(feats), jnp.zeros((num_tiles, tile * tile), feats.dtype),
             jnp.zeros((num_tiles, tile * tile, 3), feats.dtype))
    grad, _, _ = jax.lax.fori_loop(0, num_chunks, body, carry)
    return grad, None, None, None, None


_blend.defvjp(_blend_fwd, _blend_bwd)


@functools.partial(jax.jit, static_argnames=("height", "width", "tile", "chunk", "clamp",
                                             "background"))
def render_blend(params: P.GaussianParams | P.CholeskyParams, height: int, width: int, *,
                 tile: int = X.DEFAULT_TILE, chunk: int | None = None,
                 clamp: bool = True, background: float = BACKGROUND) -> jax.Array:
    """Renders [H, W, 3] by front-to-back alpha blending in row order (module docstring),
    with the tiled XLA rasterizer; differentiable in every field of `params`.

    Args:
      params: raw Gaussian parameters, N rows, row 0 in front; opacity o as stored (the
        caller applies any activation, e.g. 3DGS's sigmoid).
      height, width: output size in pixels (static).
      tile, chunk: as for `render_xla` (static; chunk None: `xla.default_chunk()`).
      clamp: clamp to [0, 1].
      background: the grey level behind every Gaussian (static; white by default, as
        GaussianImage's 3DGS baseline).
    """
    if params.means.shape[0] == 0:
        return (jnp.full((height, width, 3), background, params.colors.dtype)
                + 0.0 * jnp.sum(params.colors))
    chunk = X.default_chunk() if chunk is None else chunk
    proj = X.project(params, height, width, tile)
    img = _blend(proj.feats, proj.tx0, proj.ty0, proj.wx, proj.counts, height, width, tile,
                 chunk, float(background))
    return jnp.clip(img, 0.0, 1.0) if clamp else img
