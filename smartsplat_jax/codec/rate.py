"""Rate control: the quantizer steps that fill a byte budget, measured with the real coder.

A target compression ratio CR allows floor(3 H W / CR) bytes (`byte_budget`). Three step
sizes decide the rate: positions, log-scales (which also set the angle grid, see
`quantize.angle_levels_table`) and colours. `plan` chooses them in two parts:

  1. Allocation between the groups (`allocate`). For a uniform quantizer with step D_g the
     added squared error is about c_g D_g^2 and the rate falls by n_g bits per halving of D_g
     (n_g codes per Gaussian), so the distortion for a given rate is smallest at
     D_g ~ sqrt(n_g / c_g) (equal slopes). c_g is measured on the Gaussians themselves: the
     mean squared change of the render when group g is perturbed by uniform noise of a probe
     step (two draws, independent of the target image).
  2. The level (`spec_for_budget`): one integer q moves the steps together in 1/24-octave
     increments (one group's step by 2**(1/8) at a time, round robin), and a bisection over q
     finds the finest grid whose file, encoded by the real coder, fits `fill` of the budget.

After quantization-aware training has put positions, scales and angles on their grid,
`color_for_budget` picks the finest colour step that fits the budget exactly (colours train
in float until then); `fit_budget` coarsens by single increments if nothing else fits. A set
that stores opacities (alpha-blended, 3DGS) has its opacity step chosen there too
(`opacity_for_budget`): each step of `OPACITY_EXPS` leaves the rest of the budget to the
colours, and the pair whose nearest codes render closest to the float render wins.
`BudgetQuantizer` packages both for `train.fit`, and its `round` picks the colours' codes on
that grid by compensated rounding (`codec.rounding`), one colour step coarser when the
compensated codes cost a few bytes more than the budget (`round` returns the grid it used).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import params as P
from smartsplat_jax.codec.format import encode
from smartsplat_jax.codec.quantize import COLOR_BASIS, QUANT_LIMITS, QuantSpec, choose_spec, grid
from smartsplat_jax.codec.rounding import compensated_round, nearest_round

__all__ = ["byte_budget", "gaussians_for_budget", "Allocation", "allocate", "spec_at", "spec_for_budget",
           "fit_budget", "level_range", "color_for_budget", "opacity_for_budget",
           "BudgetQuantizer", "DEFAULT_ALLOCATION", "OPACITY_EXPS"]

_GROUPS = ("pos_exp", "scale_exp", "color_exp")
_CODES_PER_GAUSSIAN = {"pos_exp": 2.0, "scale_exp": 2.0, "color_exp": 3.0}
_PROBE = {"pos_exp": -16, "scale_exp": -32, "color_exp": -64}  # 1/4 px, 1/16 octave, 1/256
# The opacity steps `opacity_for_budget` tries, 1/256 to 1/16 in half octaves. The fixed
# 1/256 of before cost 3DGS files (measured, colours compensated after): on a 128x128 photo
# crop at CR 50, N = 140, after 20,000 steps, 33.79 dB where the float colours and opacities
# render 34.61 dB (the opacities took 140 of its 980 bytes); the search picks 2^-5.5 and
# colours 1.8x finer: 34.02 dB (the seven steps from 1/256 to 2^-5 decode to 33.52-34.25 dB). A
# Kodak crop's (5,000 steps): 18.35 -> 18.51 dB, the float set at 18.55 dB.
OPACITY_EXPS = tuple(range(-64, -31, 4))


def byte_budget(height: int, width: int, cr: float) -> int:
    """floor(3 H W / CR): the largest file, in bytes, that honours compression ratio `cr`."""
    height, width = P._check_size(height, width)
    if isinstance(cr, bool) or not isinstance(cr, (int, float)) or not math.isfinite(cr) or cr <= 0:
        raise ValueError(f"cr={cr!r} must be a finite number > 0")
    return int(3 * height * width // cr)


def gaussians_for_budget(height: int, width: int, cr: float, gaussians="paper") -> int:
    """The number of Gaussians N to fit for a target compression ratio.

    Args:
      height, width: the image size in px.
      cr: the target compression ratio (the file gets floor(3 H W / CR) bytes).
      gaussians: "paper" (N = floor(3 H W / (7 CR)), SPEC §1: what the paper and the method
        comparisons use) or an integer N. Measured at equal bytes, more Gaussians on coarser
        grids can win (CR 50, 256^2 photo crops, 3,000 steps: 1.25x the paper's N +0.24 and
        +0.47 dB) or lose (CR 20, a Kodak photo, 1,000 steps: 1.25x -0.40 dB, 1.5x -2.3 dB);
        "auto" measures it per image (`gaussian_count`).

    Raises:
      ValueError: a bad mode, or an N outside [1, H*W] (the message gives the valid CRs).
    """
    if gaussians == "paper":
        return P.num_gaussians(height, width, cr)
    if gaussians == "auto":
        raise ValueError("gaussians='auto' is chosen by fitting pilots, not by a formula: use "
                         "pipeline.compress_image / run_fit or "
                         "gaussian_count.choose_num_gaussians")
    if isinstance(gaussians, bool) or not isinstance(gaussians, (int, np.integer)):
        raise ValueError(f"gaussians={gaussians!r} must be 'paper', 'auto' or an integer N")
    if not 1 <= gaussians <= height * width:
        raise ValueError(f"gaussians={gaussians} must be in [1, {height * width}] for a "
                         f"{height}x{width} image")
    return int(gaussians)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Step exponents (in 1/8 octaves) of each group at level q = 0, and the angle factor."""

    pos_exp: int = -16
    scale_exp: int = -32
    color_exp: int = -64
    angle_exp: int = 0

    def at(self, q: int) -> dict:
        """The exponents at level q: each 3 levels coarsen every group by one exponent step,
        colour first, then scale, then position."""
        out = {}
        for i, g in enumerate(("color_exp", "scale_exp", "pos_exp")):
            out[g] = getattr(self, g) + (q + 2 - i) // 3
        out["angle_exp"] = self.angle_exp
        return out


DEFAULT_ALLOCATION = Allocation()


def _render_fn(height: int, width: int, backend: str):
    from smartsplat_jax.render import render, resolve_backend

    backend = resolve_backend(backend, forward_only=True)  # before tracing: renders only
    return jax.jit(lambda p: render(p, height, width, backend=backend))


def allocate(params: P.GaussianParams, height: int, width: int, *, backend: str = "auto",
             key: jax.Array | None = None) -> Allocation:
    """Steps per group that equalize distortion-rate slopes (module docstring, part 1).

    Args:
      params: trained Gaussians (N rows) at height x width px.
      backend: renderer for the probe renders (7 renders in all).
      key: PRNG key of the probe noise (default PRNGKey(0)).

    Returns:
      An `Allocation` whose colour exponent is the probe's (-64) and the others are set
      relative to it.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    f = _render_fn(height, width, backend)
    base = f(params)
    n = params.num
    basis = jnp.asarray(COLOR_BASIS, jnp.float32)
    cost = {}
    for g, e in _PROBE.items():
        step = 2.0 ** (e / 8)
        acc = 0.0
        for k in jax.random.split(jax.random.fold_in(key, len(cost)), 2):
            if g == "pos_exp":
                u = jax.random.uniform(k, (n, 2), minval=-0.5, maxval=0.5) * step
                p = params.replace(means=params.means + 2.0 * u / jnp.asarray([width, height]))
            elif g == "scale_exp":
                u = jax.random.uniform(k, (n, 2), minval=-0.5, maxval=0.5) * step
                p = params.replace(scales=params.scales * jnp.exp2(u))
            else:
                u = jax.random.uniform(k, (n, 3), minval=-0.5, maxval=0.5) * step
                p = params.replace(colors=params.colors + u @ basis)
            acc += float(jnp.mean(jnp.square(f(p) - base)))
        cost[g] = max(acc / 2.0, 1e-30) / step ** 2
    # D_g ~ sqrt(n_g / c_g), in exponent units relative to colour at its probe exponent.
    logd = {g: 0.5 * math.log2(_CODES_PER_GAUSSIAN[g] / cost[g]) for g in cost}
    ref = logd["color_exp"] - _PROBE["color_exp"] / 8
    exps = {}
    for g in cost:
        lo, hi = QUANT_LIMITS[g]
        exps[g] = int(np.clip(round(8 * (logd[g] - ref)), lo, hi))
    return Allocation(**exps)


def spec_at(params: P.GaussianParams, height: int, width: int, allocation: Allocation,
            q: int) -> QuantSpec | None:
    """The spec at level q, or None if a step leaves its limits or a range needs too many
    codes."""
    exps = allocation.at(q)
    for g in _GROUPS:
        lo, hi = QUANT_LIMITS[g]
        if not lo <= exps[g] <= hi:
            return None
    try:
        return choose_spec(params, height, width, **exps)
    except ValueError:
        return None


def level_range(allocation: Allocation) -> tuple[int, int]:
    """(q_min, q_max): the levels at which every step exponent is within QUANT_LIMITS."""
    qs = [q for q in range(-2000, 2001)
          if all(QUANT_LIMITS[g][0] <= v <= QUANT_LIMITS[g][1]
                 for g, v in allocation.at(q).items() if g in _GROUPS)]
    if not qs:
        raise ValueError(f"{allocation} has no level within the quantizer's limits")
    return qs[0], qs[-1]


def _finest_fitting(make, lo: int, hi: int, guess: int, target: float, height: int,
                    width: int, params: P.GaussianParams) -> tuple[QuantSpec | None, int, int]:
    """Bisection over k in [lo, hi] (the file shrinks as k grows) for the smallest k whose
    spec `make(k)` (None: invalid, e.g. too many levels) encodes `params` in <= target bytes.

    Returns:
      (spec, k, file_bytes); when even k = hi does not fit, hi's (its size says so).
    """
    cache: dict[int, tuple[QuantSpec | None, int]] = {}

    def size(k: int) -> int:
        if k not in cache:
            spec = make(k)
            cache[k] = (spec, len(encode(params, height, width, spec=spec)) if spec else -1)
        return cache[k][1]

    fits = lambda k: 0 <= size(k) <= target  # noqa: E731
    a, b = lo - 1, hi  # a: does not fit (virtually); b: the coarsest
    if not fits(b):
        return cache[b][0], b, cache[b][1]
    guess = min(max(guess, lo), hi)  # start near the usual operating point
    if fits(guess):
        b = guess
    else:
        a = guess
    while b - a > 1:
        mid = (a + b) // 2
        if fits(mid):
            b = mid
        else:
            a = mid
    return cache[b][0], b, cache[b][1]


def spec_for_budget(params: P.GaussianParams, height: int, width: int, max_bytes: int | None,
                    allocation: Allocation = DEFAULT_ALLOCATION, *,
                    fill: float = 0.99) -> tuple[QuantSpec, int, int]:
    """The finest level whose file (`encode`) has at most fill * max_bytes bytes.

    Returns:
      (spec, q, file_bytes). max_bytes None: the first valid level from 0. When even the
      coarsest level does not fit, the coarsest spec is returned (its size says so).
    """
    q_min, q_max = level_range(allocation)
    make = lambda q: spec_at(params, height, width, allocation, q)  # noqa: E731
    if max_bytes is None:
        q = min(max(0, q_min), q_max)
        while make(q) is None and q < q_max:
            q += 1
        spec = make(q)
        return spec, q, len(encode(params, height, width, spec=spec))
    return _finest_fitting(make, q_min, q_max, 0, fill * max_bytes, height, width, params)


def color_for_budget(params: P.GaussianParams, height: int, width: int, max_bytes: int,
                     spec: QuantSpec) -> tuple[QuantSpec, int]:
    """The finest colour step whose file fits max_bytes, the other grids as in `spec`.

    Returns:
      (spec, file_bytes); when even the coarsest colour step does not fit, that spec (its size
      says so).
    """
    lo, hi = QUANT_LIMITS["color_exp"]
    final, _, size = _finest_fitting(lambda e: _with_color_exp(params, height, width, spec, e),
                                     lo, hi, spec.color_exp, max_bytes, height, width, params)
    return final, size


def _with_color_exp(params: P.GaussianParams, height: int, width: int, spec: QuantSpec,
                    e: int) -> QuantSpec | None:
    """`spec` with colour step exponent `e` (the colour range refitted to `params`), or None
    where `e` is out of range or the colours need more levels than a code holds."""
    try:
        return choose_spec(params, height, width, pos_exp=spec.pos_exp,
                           scale_exp=spec.scale_exp, angle_exp=spec.angle_exp,
                           color_exp=e, opacity_exp=spec.opacity_exp)
    except ValueError:
        return None


def opacity_for_budget(params: P.GaussianParams, height: int, width: int, max_bytes: int,
                       spec: QuantSpec, exps=OPACITY_EXPS, *, backend: str = "auto"
                       ) -> tuple[QuantSpec, int, list[dict]]:
    """The opacity step, and with it the finest colour step that fits max_bytes
    (`color_for_budget`), that renders closest to `params`' own render.

    For a set that stores opacities (positions, scales and angles already on the grid of
    `spec`, colours and opacities in float): each step exponent of `exps` (in 1/8 octaves)
    gets the finest colour step that fits; every attribute is rounded to its nearest code,
    and the mean squared difference of that render from the render of `params` is measured
    (one render per step; the target image is not needed). A coarser opacity step frees bytes
    for finer colours; the best trade depends on the set.

    Returns:
      (spec, file_bytes, trials): the winner (or, when no step fits, the last step's
      coarsest-colour spec, whose size says so), and per step tried
      {"opacity_exp", "color_exp", "bytes", "mse"} (mse None: it does not fit).
    """
    exps = tuple(int(e) for e in exps)
    render = _render_fn(height, width, backend)
    reference = render(params)
    best, last, trials = None, None, []
    for e in exps:
        try:
            s = choose_spec(params, height, width, pos_exp=spec.pos_exp,
                            scale_exp=spec.scale_exp, angle_exp=spec.angle_exp,
                            color_exp=spec.color_exp, opacity_exp=e)
        except ValueError:
            continue
        s, size = color_for_budget(params, height, width, max_bytes, s)
        last, mse = (s, size), None
        if 0 <= size <= max_bytes:
            rounded = render(nearest_round(params, grid(s), height, width))
            mse = float(jnp.mean(jnp.square(rounded - reference)))
            if best is None or mse < best[2]:
                best = (s, size, mse)
        trials.append({"opacity_exp": e, "color_exp": s.color_exp, "bytes": size, "mse": mse})
    if best is None:
        s, size = last or color_for_budget(params, height, width, max_bytes, spec)
        return s, size, trials
    return best[0], best[1], trials


def _coarser(spec: QuantSpec, k: int) -> dict:
    """The step exponents of `spec` coarsened by k increments (colour, scale, position, ...)."""
    exps = {"color_exp": spec.color_exp, "scale_exp": spec.scale_exp, "pos_exp": spec.pos_exp}
    for i, g in enumerate(("color_exp", "scale_exp", "pos_exp")):
        exps[g] += (k + 2 - i) // 3
    return exps


def fit_budget(params: P.GaussianParams, height: int, width: int, max_bytes: int | None,
               spec: QuantSpec) -> tuple[QuantSpec, bytes, bool]:
    """Encodes `params` with `spec`, coarsening one increment at a time until the file fits.

    Returns:
      (spec, data, fits). When nothing fits within 72 increments (or the steps reach their
      limits), the last (smallest) file is returned with fits=False.
    """
    data = encode(params, height, width, spec=spec)
    if max_bytes is None or len(data) <= max_bytes:
        return spec, data, True
    for k in range(1, 73):
        exps = _coarser(spec, k)
        if any(not QUANT_LIMITS[g][0] <= v <= QUANT_LIMITS[g][1] for g, v in exps.items()):
            break
        try:
            s = choose_spec(params, height, width, angle_exp=spec.angle_exp,
                            opacity_exp=spec.opacity_exp, **exps)
        except ValueError:
            continue
        spec, data = s, encode(params, height, width, spec=s)
        if len(data) <= max_bytes:
            return spec, data, True
    return spec, data, False


@dataclasses.dataclass
class BudgetQuantizer:
    """Rate control for `train.fit(quantizer=...)`: the file fills a byte budget.

    `plan` (at the start of quantization-aware training) measures the allocation between the
    groups (`allocate`) and finds the finest level whose file fits `fill` of the budget
    (`spec_for_budget`); `finish` (after the last step, positions, scales and angles on their
    grid) picks the finest colour step that fits the budget itself (`color_for_budget`; for
    a set that stores opacities, with the opacity step of `opacity_exps` that renders best,
    `opacity_for_budget`), coarsening the rest only if even the coarsest colours do not fit
    (`fit_budget`).

    Attributes:
      height, width: the image size in px.
      budget: the byte budget (None: no limit, the allocation's level 0).
      backend: renderer of the allocation's probe renders.
      fill: the share of the budget the plan aims at.
      compensate: `round` chooses the colour codes by compensated rounding
        (`codec.rounding`): True (default) or False (nearest codes). Measured (CPU), decoded
        PSNR with nearest / compensated codes, and the float colours on the same grid in
        brackets: SmartSplat at CR 50 after 20,000 steps on a 128^2 satellite crop
        (N = 140) 36.20 / 36.38 dB (36.49) and a 256^2 camp crop (N = 561) 39.49 / 39.69 dB
        (39.94); the 768x512 demo photo at CR 20 after 1,000 steps (N = 8,426) 37.60 /
        37.65 dB (37.72); 3DGS on the satellite crop after 4,000 steps 32.55 / 32.68 dB
        (32.70, one colour step coarser). Its cost is about 110 renders with their
        gradients, one compiled program (7 s for the demo photo on a 2-core CPU, against
        73 s of training).
      compensate_coarser: how many colour steps coarser (1/8 octave each) `round` may go
        when the compensated codes of the finest fitting step cost more than the budget
        (they are not the nearest codes `finish` measured, and can cost a few bytes more).
      opacity_exps: the opacity steps `finish` tries for sets that store opacities (step
        exponents in 1/8 octaves, within QUANT_LIMITS; one, e.g. (-64,) for 1/256, fixes it).
    """

    height: int
    width: int
    budget: int | None
    backend: str = "auto"
    fill: float = 0.99
    compensate: bool = True
    opacity_exps: tuple[int, ...] = OPACITY_EXPS
    compensate_coarser: int = 2

    def __post_init__(self):
        lo, hi = QUANT_LIMITS["opacity_exp"]
        exps = self.opacity_exps
        if (not isinstance(exps, (tuple, list)) or not exps
                or any(isinstance(e, bool) or not isinstance(e, (int, np.integer))
                       or not lo <= e <= hi for e in exps)):
            raise ValueError(f"opacity_exps={exps!r} must be a non-empty tuple of integers in "
                             f"[{lo}, {hi}] (opacity step exponents, 1/8 octaves)")
        self.opacity_exps = tuple(int(e) for e in exps)
        k = self.compensate_coarser
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= 8:
            raise ValueError(f"compensate_coarser={k!r} must be an integer in [0, 8] (colour "
                             "steps of 1/8 octave)")
        if not isinstance(self.compensate, (bool, np.bool_)):
            raise ValueError(f"compensate={self.compensate!r} must be True or False")

    def plan(self, params: P.GaussianParams) -> tuple[QuantSpec, dict]:
        t0 = time.perf_counter()
        allocation = allocate(params, self.height, self.width, backend=self.backend)
        spec, q, size = spec_for_budget(params, self.height, self.width, self.budget,
                                        allocation, fill=self.fill)
        return spec, {"allocation": dataclasses.asdict(allocation), "level": q,
                      "planned_bytes": size, "plan_seconds": time.perf_counter() - t0}

    def finish(self, params: P.GaussianParams, spec: QuantSpec) -> tuple[QuantSpec, dict]:
        t0 = time.perf_counter()
        if self.budget is None:
            return spec, {"finish_seconds": 0.0}
        info = {}
        if spec.opacity_levels:
            final, size, trials = opacity_for_budget(params, self.height, self.width,
                                                     self.budget, spec, self.opacity_exps,
                                                     backend=self.backend)
            info["opacity_trials"] = trials
        else:
            final, size = color_for_budget(params, self.height, self.width, self.budget, spec)
        if not 0 <= size <= self.budget:
            final, data, _ = fit_budget(params, self.height, self.width, self.budget, final)
            size = len(data)
        return final, {**info, "final_bytes": size,
                       "finish_seconds": time.perf_counter() - t0}

    def round(self, params: P.GaussianParams, spec: QuantSpec
              ) -> tuple[P.GaussianParams, QuantSpec, dict]:
        """`params` on the grid of `spec` (after `finish`), the colours by compensated rounding
        (`codec.rounding`) when `compensate` is set.

        `finish` chose the finest colour step whose *nearest* codes fit the budget; the
        compensated codes can cost a few bytes more. Then the colour step is made coarser, one
        1/8 octave at a time (up to `compensate_coarser` times), until the compensated codes
        fit; they are kept when they render closer to the float colours than the nearest
        codes of `spec` (a step 9 % coarser adds about 19 % to the rounding error, where
        compensation removes 30-90 % of it), otherwise the nearest codes of `spec` are.

        Returns:
          (params on the grid, the spec of that grid: `spec` or a coarser colour step, info):
          info["rounding"] says which codes were kept and why; with compensation, also
          "rounding_mse_nearest" (of `spec`'s nearest codes), "rounding_trials" (per colour
          step tried: "color_exp", "bytes", "mse" of its compensated codes; mse is
          ||W (c - c*)||^2 / (3 H W), the mean squared change of the unclamped render),
          "final_bytes" (the file's size) and "rounding_seconds".
        """
        t0 = time.perf_counter()
        # Called only where the nearest codes are kept (compensation computes its own).
        nearest = functools.partial(nearest_round, params, grid(spec.check()), self.height,
                                    self.width)
        if not self.compensate or params.num == 0:
            return nearest(), spec, {"rounding": "nearest"}
        trials, mse_near, choice = [], None, None
        for k in range(self.compensate_coarser + 1):
            s = spec if k == 0 else _with_color_exp(params, self.height, self.width, spec,
                                                    spec.color_exp + k)
            if s is None:
                break
            comp, errs = compensated_round(params, grid(s), self.height, self.width)
            mse_near = errs["mse_nearest"] if k == 0 else mse_near
            size = len(encode(comp, self.height, self.width, spec=s))
            mse = errs["mse_compensated"]
            trials.append({"color_exp": s.color_exp, "bytes": size, "mse": mse})
            if not (mse <= mse_near):  # also NaN: coarser steps would only be worse
                break
            if self.budget is None or size <= self.budget:
                choice = (comp, s, size)
                break
        info = {"rounding_mse_nearest": mse_near, "rounding_trials": trials}
        if choice is not None:
            out, spec, size = choice
            info["rounding"] = "compensated" + (
                f" (colour step {len(trials) - 1}/8 octave coarser: the finest step's "
                f"compensated codes took {trials[0]['bytes']} bytes, over the budget)"
                if len(trials) > 1 else "")
        else:
            out = nearest()
            size = len(encode(out, self.height, self.width, spec=spec))
            last = trials[-1] if trials else None
            info["rounding"] = "nearest" + (
                "" if last is None else
                " (compensated: not closer)" if not (last["mse"] <= mse_near) else
                f" (compensated: {last['bytes']} bytes, over the budget)")
        info["final_bytes"] = size
        info["rounding_seconds"] = time.perf_counter() - t0
        return out, spec, info
