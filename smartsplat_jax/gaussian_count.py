"""How many Gaussians a byte budget should buy: the search behind `gaussians="auto"`.

A file of B bytes holds N Gaussians at B / N bytes each, so N trades against the precision of
each Gaussian: more Gaussians leave coarser quantization grids (`codec.rate` fills the
budget whatever N is). The paper fixes N = floor(3 H W / (7 CR)) (SPEC §1; `"paper"`, which
the method comparisons keep). Which N gives the best decoded image depends on the image, the
CR and the training length.

`choose_num_gaussians` measures it. On a geometric ladder around the paper's N,

    N_k = round(N_paper * 2^(k / 4)),   k = 0, +-1, +-2, ...  (a quarter octave per rung),

it fits pilot runs (the method's initialization and training, the same PRNG key, the last
steps quantization-aware as in the full run), encodes each within the budget, decodes it and
scores the decoded file's PSNR. It climbs from k = 0 towards the better of k = +1 and k = 0
(else downwards), one rung at a time, and stops at the first rung that is not better than
the best so far, at a file over the budget, or after `max_trials` pilots (`climb`).

By default a pilot is the whole run, so the search is exact for the rungs it visits and the
chosen pilot *is* the result (nothing is trained twice); it costs 3 to 5 runs. Shorter
pilots (`pilot_steps`) are cheaper but biased towards more Gaussians: the quantization loss
of the coarser grids grows as training sharpens the Gaussians. Measured on a 256^2 crop of
CLIC2020_5 (resized to 1024 px) at CR 50, decoded PSNR at 0.84 / 1 / 1.19 / 1.41 x the
paper's N: 300 steps 26.94 / 27.27 / 27.53 / 27.92 dB (best 1.41x), 3,000 steps
29.25 / 29.57 / 29.81 / 29.44 dB (best 1.19x; float-to-file drop 0.00 / 0.07 / 0.32 / 1.13 dB).
At CR 20 on the same crop: 300 steps 29.96 / 30.60 / 30.86 / 30.85 dB, 3,000 steps
32.92 / 33.39 / 33.66 / 32.90 dB (best 1.19x both). At CR 200 with the L2 loss, 4,000
steps, whole photos at 1024 px, 1 / 1.19 / 1.41 / 1.68 x: CLIC2020_5 30.30 / 30.50 / 30.33 dB
(float 30.36 / 30.77 / 31.39; the search stopped there), Morskie_Oko 30.13 / 30.50 / 30.68 /
30.67 dB.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from smartsplat_jax import metrics

__all__ = ["ladder_gaussians", "climb", "choose_num_gaussians", "pilot_dir", "LADDER_OCTAVES",
           "MAX_TRIALS"]

LADDER_OCTAVES = 0.25  # octaves of N between rungs of the ladder
MAX_TRIALS = 5  # the most pilots of a search (`choose_num_gaussians`'s default)


def ladder_gaussians(n_paper: int, k: int, max_n: int) -> int:
    """N on rung k of the ladder: round(n_paper * 2^(k * LADDER_OCTAVES)), within [1, max_n]."""
    return int(min(max(1, round(n_paper * 2.0 ** (k * LADDER_OCTAVES))), max_n))


def climb(score, max_trials: int) -> int:
    """The rung k chosen by the ladder search: score(0), then score(1); upwards from 1 while
    each rung beats the best so far, else downwards from -1 the same way; at most
    `max_trials` calls of score (a rung's score: higher is better; -inf: unusable).

    Returns:
      The best rung scored (0 when only one trial is allowed).
    """
    scores = {0: score(0)}
    if max_trials < 2:
        return 0
    scores[1] = score(1)
    direction = 1 if scores[1] > scores[0] else -1
    best = 1 if direction > 0 else 0
    k = best + direction
    while len(scores) < max_trials:
        scores[k] = score(k)
        if not scores[k] > scores[best]:
            break
        best, k = k, k + direction
    return best


def choose_num_gaussians(image, cr: float, *, method: str, config, key: jax.Array,
                         backend: str, pilot_steps: int | None = None,
                         max_trials: int | None = None, workdir=None, resume: bool = True,
                         run_info: dict | None = None, log=None,
                         progress: bool = False) -> tuple[int, dict, tuple | None]:
    """The N whose pilot fit decodes best at the byte budget of `cr` (module docstring).

    Args:
      image: [H, W, 3] float32 target in [0, 1].
      cr: target compression ratio (budget floor(3 H W / CR) bytes).
      method: the initialization and training method (`train.config.METHODS`).
      config: the full run's `FitConfig` (backend: a concrete name). Pilots of the full
        length train with it unchanged; shorter pilots with `steps` = pilot_steps, the
        quantization-aware steps scaled in proportion, and no evaluation or checkpoints.
      key: the PRNG key of the initialization (the full run's).
      backend: a concrete renderer backend name (`render.resolve_backend`).
      pilot_steps: steps per pilot, in [1, config.steps] (None: config.steps, exact).
      max_trials: the most pilots, >= 1 (None: `MAX_TRIALS`).
      workdir: full-length pilots checkpoint to workdir/n<N> (`train.fit`'s workdir) and
        resume from there when `resume`; None: no checkpoints.
      run_info: passed to `train.fit` (the checkpoints' fingerprint).
      log: None, or a function taking one line of progress text.
      progress: show each pilot's training progress (`train.fit`).

    Returns:
      (n, search, fitted): the chosen N; a JSON-ready record {"n": n, "n_paper",
      "pilot_steps", "trials": [{"k", "n", "psnr", "psnr_float", "file_bytes",
      "fits_budget", "diverged", "seconds"}, ...] in the order run, "seconds"}; and, when
      pilots were full-length and the chosen one did not diverge, its (params, history) as
      `train.fit` returned them (else None: train the chosen N).

    Raises:
      ValueError: bad `pilot_steps` or `max_trials` (named, with the accepted range), or bad
        image/CR as `codec.rate.byte_budget` and `params.num_gaussians` raise them.
    """
    from smartsplat_jax import params as P
    from smartsplat_jax.codec.rate import byte_budget
    from smartsplat_jax.pipeline import _as_gaussian, _encode_and_decode, _train
    from smartsplat_jax.train import initialize
    from smartsplat_jax.train.sharded import mesh_devices
    from smartsplat_jax.train.config import default_qat_steps

    max_trials = MAX_TRIALS if max_trials is None else max_trials
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials={max_trials!r} must be an integer >= 1")
    steps = config.steps if pilot_steps is None else pilot_steps
    if (isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
            or not 1 <= steps <= config.steps):
        raise ValueError(f"pilot_steps={pilot_steps!r} must be an integer in "
                         f"[1, {config.steps}] (the run's steps)")
    steps = int(steps)
    full = steps == config.steps
    h, w = int(image.shape[0]), int(image.shape[1])
    budget = byte_budget(h, w, cr)
    n_paper = P.num_gaussians(h, w, cr)
    if full:
        pilot = config
    else:
        qat = (default_qat_steps(steps) if config.qat_steps is None else
               min(steps, max(1, round(config.qat_steps * steps / config.steps)))
               if config.qat_steps else 0)
        pilot = dataclasses.replace(config, steps=steps, qat_steps=qat, eval_every=0,
                                    checkpoint_every=0)
    t_start = time.perf_counter()
    trials: dict[int, dict] = {}
    kept: dict[int, tuple] = {}  # the best full-length pilot's (params, history)

    def run(k: int) -> float:
        n = ladder_gaussians(n_paper, k, h * w)
        if any(t["n"] == n for t in trials.values()):
            return -math.inf  # the ladder is clipped here: nothing new to try
        t0 = time.perf_counter()
        if log is not None:
            log(f"pilot {len(trials) + 1}/{max_trials}: N={n} (rung {k:+d}), {steps} steps")
        params0, _ = initialize(method, key, image, n,
                                 devices=mesh_devices(config.devices))
        params, history, stopped = _train(
            method, image, params0, pilot, key, budget, progress=progress, resume=resume,
            workdir=None if workdir is None or not full else pilot_dir(workdir, n),
            run_info=run_info)
        diverged = stopped is not None
        _, rendered, info = _encode_and_decode(image, _as_gaussian(params), history, pilot,
                                               budget, backend)
        psnr = float(metrics.psnr(rendered, image))
        fits = bool(info["fits_budget"])
        trials[k] = {"k": k, "n": n, "psnr": psnr, "psnr_float": float(info["psnr_float"]),
                     "file_bytes": int(info["file_bytes"]), "fits_budget": fits,
                     "diverged": diverged, "seconds": time.perf_counter() - t0}
        if log is not None:
            log(f"pilot {len(trials)}/{max_trials}: N={n}: decoded "
                f"{psnr:.2f} dB, {info['file_bytes']} B{'' if fits else ' (over budget)'}"
                f"{' (diverged)' if diverged else ''}")
        score = psnr if fits and math.isfinite(psnr) else -math.inf
        if full and not diverged and (not kept or score > next(iter(kept.values()))[2]):
            kept.clear()
            kept[k] = (params, history, score)
        return score

    best = climb(run, max_trials)
    n = trials[best]["n"]
    fitted = kept[best][:2] if best in kept else None
    return n, {"n": n, "n_paper": n_paper, "pilot_steps": steps,
               "trials": list(trials.values()), "seconds": time.perf_counter() - t_start}, fitted


def pilot_dir(workdir, n: int):
    """The workdir of the full-length pilot with N = n under a search's `workdir`."""
    from pathlib import Path

    return Path(workdir) / f"n{n}"
