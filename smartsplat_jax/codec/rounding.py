"""Compensated rounding: the colour codes chosen for the render, not one Gaussian at a time.

Once positions, scales, angles and opacities are on their grid, the render is linear in the
colours: the image is sum_i w_i(p) c_i plus a constant (the background of a blended set),
with w_i(p) = exp(-sigma_i(p)) for the SPEC §3 sum and alpha_i(p) T_i(p) for the alpha blend,
up to the final clamp to [0, 1]. Rounding colours c* to codes adds the image error
sum_i w_i e_i, e_i = q(c_i) - c*_i. Nearest rounding leaves every e_i where it falls; yet a
Gaussian's error can be absorbed by the Gaussians that overlap it, and a few large, opaque
ones carry most of it (measured on a trained 3DGS set, 128x128, N = 140: 5 % of the
Gaussians held 74 % of the rounding error's energy, and nearest rounding cost 1.12 dB).

`compensated_round` rounds in stages, as GPTQ (Frantar et al., ICLR 2023) rounds weights and
Babai's nearest-plane method rounds onto a lattice: the Gaussians with the largest
sensitivity S_i = sum_p w_i(p)^2 are rounded first; then the colours not yet rounded are
re-solved, by conjugate gradients on the normal equations, to minimise ||W (c - c*)||^2 (the
squared difference between the render of the colours and the float render; W is applied
by the unclamped render, W^T by its gradient); then the next, less sensitive group is
rounded, and so on; the last group is rounded to its nearest codes. S_i is estimated from
`probes` random probes (Hutchinson's estimate of the diagonal of W^T W).
Every colour ends on the grid, so the decoder renders exactly these values. The Gaussians that
add nothing (`codec.prune.absent`: opacity 0, or pruned to colour exactly 0 in an additive set)
keep their colours, so that the file still leaves the pruned ones out.

Measured on the 20,000-step sets of a 256x256 photo crop at CR 50 (SmartSplat, N = 561) and
its 128x128 centre (3DGS, N = 140), with the file's grid (four stages of 20 iterations):
nearest rounding 30.817 / 33.745 dB, compensated 30.862 / 34.383 dB (the float colours:
30.911 / 34.866 dB), in 3,922 / 980 bytes (nearest: 3,918 / 980). The cost: 3 + probes +
len(stages) * (1 + iterations) renders, each with its gradient, in one compiled scan (107
with the defaults).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P
from smartsplat_jax.codec.prune import absent
from smartsplat_jax.codec.quantize import Grid, fake_quantize

__all__ = ["STAGES", "CG_ITERATIONS", "PROBES", "schedule", "nearest_round", "compensated_round"]

# The share of Gaussians rounded by the end of each stage, and the conjugate-gradient
# iterations after each. Eight short stages beat four long ones at the same cost (88 against
# 84 renders; linear rounding error of three trained sets, nearest -> four stages of 20 ->
# eight of 10: 1.54e-5 -> 8.3e-6 -> 7.0e-6, 4.70e-6 -> 3.00e-6 -> 2.65e-6 and 1.73e-5 ->
# 2.77e-6 -> 2.00e-6; see `BudgetQuantizer.compensate` for the sets).
STAGES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)
CG_ITERATIONS = 10
PROBES = 16  # random probes of the sensitivity estimate


def _linear_render(params: P.GaussianParams, height: int, width: int) -> jax.Array:
    """[H, W, 3] unclamped render: affine in the colours (tiled XLA rasterizers)."""
    if params.blend:
        from smartsplat_jax.render.blend import render_blend

        return render_blend(params, height, width, clamp=False)
    from smartsplat_jax.render.xla import render_xla

    return render_xla(params, height, width, clamp=False)


def _normal(params, v, offset, height, width):
    """(W^T (W v + b - offset), W v + b) for [N, 3] v: one render and its gradient (the render
    is affine, so its gradient at any point is W^T). With offset = b, the render of zero
    colours, the first is W^T W v."""
    out, vjp = jax.vjp(lambda c: _linear_render(params.replace(colors=c), height, width), v)
    wv = out - offset
    return vjp(wv)[0], out


@functools.partial(jax.jit, static_argnames=("height", "width"))
def nearest_round(params: P.GaussianParams, qgrid: Grid, height: int,
                  width: int) -> P.GaussianParams:
    """`params` with every attribute on its nearest code of `qgrid` (`fake_quantize`, jitted)."""
    return fake_quantize(params, qgrid, height, width)


# The kinds of step of `_run`: every step is one render and its gradient.
_OFFSET, _ERROR_NEAREST, _PROBE, _STAGE, _CG, _ERROR_FINAL = range(6)


def schedule(stages: tuple[float, ...], iterations: int, probes: int, n: int):
    """(kinds [L] int32, counts [L] int32): the steps of `_run` and, for each stage start, how
    many of the n most sensitive Gaussians are rounded by then."""
    kinds = [_OFFSET, _ERROR_NEAREST] + [_PROBE] * probes
    counts = [0] * len(kinds)
    for share in stages:
        kinds += [_STAGE] + [_CG] * iterations
        counts += [int(np.ceil(share * n))] + [0] * iterations
    kinds.append(_ERROR_FINAL)
    counts.append(0)
    return np.asarray(kinds, np.int32), np.asarray(counts, np.int32)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _run(params, qgrid, kinds, counts, key, held, height, width):
    """The whole of `compensated_round` for `params` (every attribute but the colours on the
    grid; the colours the float targets) as one scan of the steps `schedule` lists, one
    compiled copy of the rasterizer: (colours [N, 3] before their last rounding, the free
    rows [N, 1] and their CG offset x, the linear errors of nearest and of compensated
    rounding). `held` [N] bool: rows that keep their target colours (zero) throughout."""
    target = params.colors
    dtype = target.dtype
    n = target.shape[0]
    held = held[:, None]

    def rounded(c):
        return fake_quantize(params.replace(colors=c), qgrid, height, width).colors

    def stage_start(colors, free, x, sens, count):
        # Fold the last stage's CG offset into the colours, then round the `count` most
        # sensitive Gaussians (those already rounded stay where they are).
        folded = colors + free * x
        rank = jnp.argsort(jnp.argsort(-sens, stable=True), stable=True)
        fixed = (rank < count)[:, None] | held
        start = jnp.where(fixed, rounded(folded), folded)
        return start - target, start, (~fixed).astype(dtype)

    # Per kind of step: (the vector v the step renders, the colours, the free rows).
    branches = [
        lambda c, f, x, d, s, n, k: (jnp.zeros_like(c), c, f),  # _OFFSET
        lambda c, f, x, d, s, n, k: (rounded(target) - target, c, f),  # _ERROR_NEAREST
        lambda c, f, x, d, s, n, k: (jax.random.rademacher(k, c.shape, dtype), c, f),  # _PROBE
        lambda c, f, x, d, s, n, k: stage_start(c, f, x, s, n),  # _STAGE
        lambda c, f, x, d, s, n, k: (f * d, c, f),  # _CG
        lambda c, f, x, d, s, n, k: (rounded(c + f * x) - target, c, f),  # _ERROR_FINAL
    ]

    def step(carry, inp):
        colors, free, x, r, d, rs, sens, offset, errs = carry
        kind, count, k = inp
        v, colors, free = jax.lax.switch(kind, branches, colors, free, x, d, sens, count, k)
        gv, out = _normal(params, v, offset, height, width)
        err = jnp.mean(jnp.square(out - offset))
        gv = free * gv
        # CG on the free rows: min ||W (colors + free x - target)||^2 over x; a stage start
        # sets x = 0 and the residual r = -free * G (colors - target).
        r0 = -gv
        alpha = jnp.where(rs > 0, rs / jnp.maximum(jnp.vdot(d, gv), 1e-30), 0.0)
        x1, r1 = x + alpha * d, r - alpha * gv
        rs1 = jnp.vdot(r1, r1)
        d1 = r1 + jnp.where(rs > 0, rs1 / jnp.maximum(rs, 1e-30), 0.0) * d
        is_stage, is_cg = kind == _STAGE, kind == _CG
        pick = lambda on, a, b: jnp.where(on, a, b)  # noqa: E731
        return (colors, free, pick(is_stage, jnp.zeros_like(x), pick(is_cg, x1, x)),
                pick(is_stage, r0, pick(is_cg, r1, r)), pick(is_stage, r0, pick(is_cg, d1, d)),
                pick(is_stage, jnp.vdot(r0, r0), pick(is_cg, rs1, rs)),
                sens + jnp.where(kind == _PROBE, jnp.mean(v * gv, -1), 0.0),
                pick(kind == _OFFSET, out, offset),
                errs.at[0].set(pick(kind == _ERROR_NEAREST, err, errs[0]))
                    .at[1].set(pick(kind == _ERROR_FINAL, err, errs[1]))), None

    zeros = jnp.zeros_like(target)
    init = (target, (~held).astype(dtype), zeros, zeros, zeros, jnp.zeros((), dtype),
            jnp.zeros((n,), dtype), jnp.zeros((height, width, 3), dtype),
            jnp.zeros((2,), dtype))
    keys = jax.random.split(key, kinds.shape[0])
    (colors, free, x, *_, errs), _ = jax.lax.scan(step, init, (kinds, counts, keys))
    return rounded(colors + free * x), errs


def compensated_round(params: P.GaussianParams, qgrid: Grid, height: int, width: int, *,
                      key: jax.Array | None = None, stages: tuple[float, ...] = STAGES,
                      iterations: int = CG_ITERATIONS,
                      probes: int = PROBES) -> tuple[P.GaussianParams, dict]:
    """`params` with every attribute on the grid of `qgrid`: positions, scales, angles and
    opacities rounded to their nearest codes, colours by compensated rounding (see the module
    docstring).

    Args:
      params: raw parameters (N rows) fitted at height x width px; the colours are the float
        targets c*.
      qgrid: the file's grid (`quantize.grid(spec)`).
      key: PRNG key of the sensitivity probes (None: key 0, so the result is reproducible).
      stages: increasing shares in (0, 1) of the Gaussians rounded by the end of each stage.
      iterations: conjugate-gradient iterations after each stage.
      probes: random probes of the sensitivity estimate.

    Returns:
      (params on the grid, info): `fake_quantize` of the params is themselves; info holds
      "mse_nearest" and "mse_compensated", ||W (c - c*)||^2 / (3 H W) of nearest and of
      compensated rounding (the mean squared change of the unclamped render).
    """
    if list(stages) != sorted(stages) or any(not 0.0 < s < 1.0 for s in stages):
        raise ValueError(f"stages={stages!r} must be increasing shares in (0, 1)")
    for name, v in (("iterations", iterations), ("probes", probes)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    q = nearest_round(params, qgrid, height, width)
    if params.num == 0:
        return q, {"mse_nearest": 0.0, "mse_compensated": 0.0}
    kinds, counts = schedule(tuple(stages), iterations, probes, params.num)
    # Gaussians that add nothing (pruned: colour exactly 0, out of the file) stay so.
    held = jnp.asarray(absent(params))
    colors, errs = _run(q.replace(colors=params.colors), qgrid, jnp.asarray(kinds),
                        jnp.asarray(counts), jax.random.key(0) if key is None else key, held,
                        height, width)
    errs = [float(e) for e in np.asarray(errs)]
    if not all(np.isfinite(errs)) or not bool(jnp.all(jnp.isfinite(colors))):
        return q, {"mse_nearest": errs[0], "mse_compensated": float("nan")}
    return q.replace(colors=colors), {"mse_nearest": errs[0], "mse_compensated": errs[1]}
