"""Compress and decompress images end to end: the work behind `smartsplat` and `experiments.fit`.

  data, result = compress_image("photo.png", cr=20, steps=2000)   # .ssplat bytes + metrics
  image = decompress(data, width=1920)                            # [H', W', 3] float render

run_fit(image_path, workdir, cr=..., method=..., steps=...) loads the image, initializes N
Gaussians with the method's initialization, trains them (the last steps quantization-aware,
with the rate control of `codec.rate.BudgetQuantizer`), encodes the file and writes to
`workdir`:
  image.ssplat     the compressed file (its size defines the real compression ratio)
  recon.png        the decoded file rendered at full resolution (what a user gets), 8-bit PNG
  params.npz       the trained raw parameters (+ height, width): after quantization-aware
                   training they lie on the file's grid, so they render as the file does
  metrics.json     psnr, ssim, ms_ssim, num_gaussians (trained), file_gaussians (in the file:
                   those the render does not need are left out, `codec.prune`), steps,
                   relocate_every and relocated (`train.relocate`), lr_means and
                   lr_scales (the positions' and the scales' rates), loss, train_seconds,
                   height, width, cr, method, backend, device, jax_version, and more
                   (see `run_fit`);
                   strict JSON: an infinite PSNR (an exact reconstruction, "lossless": true)
                   is null
  curve.png        training loss and PSNR against the step
  init_*.png       the initialization: weights, points, render (with its PSNR)
  checkpoints/     training checkpoints (resume with resume=True)
Metrics are those of the decoded file (psnr, ssim, ms_ssim), plus psnr_float of the float
Gaussians before quantization (at the start of the quantization-aware phase); all at full
resolution (banded, bounded memory).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from smartsplat_jax import codec
from smartsplat_jax import io as sio
from smartsplat_jax import metrics
from smartsplat_jax import params as P
from smartsplat_jax.codec.prune import MAX_MSE, prune
from smartsplat_jax.codec.quantize import QuantSpec
from smartsplat_jax.codec.rate import (BudgetQuantizer, byte_budget, fit_budget,
                                       gaussians_for_budget)
from smartsplat_jax.render import output_size, render, rescale_params, resolve_backend

if TYPE_CHECKING:
    from smartsplat_jax.train.config import FitConfig

# smartsplat_jax.train (optax, the training loop) is imported by the functions that train, so
# that decoding (`decompress`, `decompress_to_file`, the CLI's decompress) starts faster.

__all__ = ["run_fit", "compress_image", "encode_trained", "decompress", "decompress_to_file",
           "decode_plan", "memory_limit_bytes", "render_bands", "MemoryLimitError",
           "save_params", "load_params", "check_workdir"]


def encode_trained(params: P.GaussianParams, history: dict, height: int, width: int,
                   budget: int | None, *, backend: str = "auto",
                   prune_mse: float = MAX_MSE) -> tuple[bytes, dict]:
    """Encodes trained params with the quantizer their training ended with, within the budget.

    After quantization-aware training (history["quant"], from `codec.rate.BudgetQuantizer`)
    the params lie on that grid and the file stores exactly them. Without it, the Gaussians
    the render does not need are pruned (`codec.prune.prune` with `prune_mse`, as training
    prunes at the phase's start), the quantizer is planned now (`BudgetQuantizer.plan` then
    `finish`) and the params are rounded. If the file is still over the budget, the steps
    are coarsened one increment at a time (`codec.rate.fit_budget`). The file leaves out the
    Gaussians that add nothing (`codec.format.dropped`).

    Returns:
      (data, info): the .ssplat bytes and {"budget_bytes", "file_bytes", "budget_used",
      "fits_budget", "quant" (the spec as a dict), "quantization_aware", "file_gaussians"
      (N in the file), "encode_seconds"}.
    """
    t0 = time.perf_counter()
    record = history.get("quant")
    if record:
        spec = QuantSpec.from_record(record)
    else:
        params, _ = prune(params, height, width, prune_mse)
        q = BudgetQuantizer(height, width, budget, backend=backend)
        spec, _ = q.finish(params, q.plan(params)[0])
    spec, data, fits = fit_budget(params, height, width, budget, spec)
    return data, {"budget_bytes": budget, "file_bytes": len(data),
                  "budget_used": None if not budget else len(data) / budget,
                  "fits_budget": fits, "quant": dataclasses.asdict(spec),
                  "quantization_aware": bool(record),
                  "file_gaussians": codec.read_info(data).num_gaussians,
                  "encode_seconds": time.perf_counter() - t0}


def _quantizer(params, height: int, width: int, budget: int, backend: str):
    """The file's quantizer for quantization-aware training; None for `CholeskyParams`
    (GaussianImage's Cholesky model trains in float and is converted, then quantized, after
    training, as its authors' representation experiments do)."""
    if isinstance(params, P.CholeskyParams):
        return None
    return BudgetQuantizer(height, width, budget, backend=backend)


def _train(method: str, image, params0, config: "FitConfig", key: jax.Array, budget: int,
           **fit_kwargs):
    """(params, history, None) from `train.train_method` with the file's quantizer (its
    sampling key folded from `key`, config.backend a concrete name), or, when training
    diverges, (the last good params, their history, the `TrainingDiverged`)."""
    from smartsplat_jax.train import TrainingDiverged, train_method

    h, w = int(image.shape[0]), int(image.shape[1])
    try:
        params, history = train_method(
            method, image, params0, config, key=jax.random.fold_in(key, 1),
            quantizer=_quantizer(params0, h, w, budget, config.backend), **fit_kwargs)
    except TrainingDiverged as e:
        return e.params, e.history, e
    return params, history, None


def _as_gaussian(params) -> P.GaussianParams:
    """`params` as GaussianParams (the file's scales and angles)."""
    return params.to_gaussian_params() if isinstance(params, P.CholeskyParams) else params


def _encode_and_decode(image, params: P.GaussianParams, history: dict, config: FitConfig,
                       budget: int, backend: str) -> tuple[bytes, np.ndarray, dict]:
    """Trained params -> (file bytes, [H, W, 3] render of the decoded file, info), rendered
    with `backend` (a concrete name).

    info is `encode_trained`'s plus psnr_float (the float Gaussians before quantization: at
    the start of the quantization-aware phase, or the trained params when there was none),
    qat_steps, qat_stages (its snapping stages per group), relocate_every and relocated (the
    Gaussians moved by relocation, all relocations together), lr_means and lr_scales (the
    positions' and the scales' rates trained with), loss (what training minimised),
    actual_cr, bytes_per_gaussian (of the file's Gaussians) and decode_seconds (file ->
    decoded render)."""
    h, w = int(image.shape[0]), int(image.shape[1])
    psnr_float = history.get("psnr_before_qat")
    if psnr_float is None:
        psnr_float = metrics.psnr(render(params, h, w, backend=backend), image)
    data, enc = encode_trained(params, history, h, w, budget, backend=backend,
                               prune_mse=config.prune_mse)
    t0 = time.perf_counter()
    decoded, _, _ = codec.decode(data)
    (rendered,) = render_bands(decoded, h, w, h, backend=backend)  # what `decompress` renders
    info = {"psnr_float": psnr_float,
            "qat_steps": (config.steps - history["qat_start"]
                          if history.get("qat_start") is not None else 0),
            "qat_stages": history.get("qat_stages") or 0,
            "relocate_every": config.relocate_every, "lr_means": config.lr_means,
            "lr_scales": config.lr_scales, "loss": config.loss,
            "relocated": sum(r["moved"] for r in history.get("relocated") or []),
            "actual_cr": 3 * h * w / len(data),
            "bytes_per_gaussian": len(data) / enc["file_gaussians"],
            "decode_seconds": time.perf_counter() - t0, **enc}
    return data, rendered, info


def decompress(data: bytes, *, width: int | None = None, height: int | None = None,
               scale: float | None = None, backend: str = "auto",
               memory_limit: int | None = None) -> np.ndarray:
    """Renders a .ssplat file at its size or another (see `render.output_size`), in memory.

    Returns:
      [H', W', 3] float32 image in [0, 1].

    Raises:
      CodecError: the bytes are not a valid file; ValueError: bad size options;
      MemoryLimitError: the decode would need more than `memory_limit` bytes (see
      `decode_plan`; `decompress_to_file` writes large PNGs in bands instead).
    """
    info = codec.read_info(data)
    oh, ow = output_size(info.height, info.width, out_width=width, out_height=height,
                         scale=scale)
    # Refused here, from the header alone, before anything N- or image-sized is allocated.
    decode_plan(info.num_gaussians, oh, ow, banded=False, memory_limit=memory_limit)
    params, h, w = codec.decode(data)
    if (oh, ow) != (h, w):
        params = rescale_params(params, (h, w), (oh, ow))
    backend = resolve_backend(backend, forward_only=True)
    (image,) = render_bands(params, oh, ow, oh, backend=backend)  # one band: the whole image
    return image


class MemoryLimitError(ValueError):
    """A decode would need more memory than the limit allows (the message says how much)."""


# Decode memory model (float32, CPU, measured with the xla backend; see `decode_plan`).
_RUNTIME_BYTES = 400 << 20  # the Python/JAX runtime and compiled programs
_BYTES_PER_GAUSSIAN = 400  # codes, params, projection, ranges (measured ~370 at N = 2^20)
_BYTES_PER_PIXEL = 48  # tile accumulator, clamped copy, host copy, quantized rows, zlib input
_BAND_BYTES = 256 << 20  # what one band of a banded decode may take


def memory_limit_bytes(memory_limit: int | str | None = None) -> int:
    """The decode memory limit in bytes: `memory_limit` (an int, or a string such as "8G",
    "512M"), else the SMARTSPLAT_MEMORY_LIMIT environment variable, else half of this
    machine's physical memory."""
    value = memory_limit if memory_limit is not None else os.environ.get("SMARTSPLAT_MEMORY_LIMIT")
    if value is None or value == "":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):
            return 8 << 30
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
        try:
            number = float(text[:-1] if mult > 1 else text)
        except ValueError:
            raise ValueError(f"memory limit {value!r} is not a size such as 8G, 512M or "
                             "1073741824") from None
        value = int(number * mult)
    if isinstance(value, bool) or not isinstance(value, int) or value < (64 << 20):
        raise ValueError(f"memory limit {value!r} must be at least 64M")
    return value


def decode_plan(num: int, out_height: int, out_width: int, *, banded: bool = True,
                memory_limit: int | str | None = None) -> dict:
    """How a decode of N Gaussians to out_height x out_width px runs, and what it needs.

    Estimate: runtime + 400 B per Gaussian + 48 B per output pixel held at once (the whole
    image, or one band of rows when `banded`: bands take at most 256 MB). Refused when over
    the limit (`memory_limit_bytes`).

    Returns:
      {"rows": rows per band (out_height when not banded), "bands", "bytes" (the estimate),
      "limit"}.

    Raises:
      MemoryLimitError: the estimate exceeds the limit.
    """
    limit = memory_limit_bytes(memory_limit)
    rows = out_height
    if banded:
        rows = max(1, min(out_height, _BAND_BYTES // (_BYTES_PER_PIXEL * out_width)))
        if rows < out_height:
            rows = max(16, rows // 16 * 16)  # whole xla/pallas tiles
    need = _RUNTIME_BYTES + _BYTES_PER_GAUSSIAN * num + _BYTES_PER_PIXEL * rows * out_width
    if need > limit:
        fixed = _RUNTIME_BYTES + _BYTES_PER_GAUSSIAN * num
        if fixed > limit:
            how = (f" (the runtime and the file's Gaussians alone need {fixed / 2**30:.2f} GiB: "
                   "a smaller output does not help)")
        else:
            how = ("" if banded else "; writing a .png output decodes in bands of rows and "
                   "needs less")
        raise MemoryLimitError(
            f"decoding {num} Gaussians to {out_width}x{out_height} px needs about "
            f"{need / 2**30:.2f} GiB, over the limit of {limit / 2**30:.2f} GiB{how}; raise it "
            "with --memory-limit or SMARTSPLAT_MEMORY_LIMIT, or decode at a smaller size")
    return {"rows": rows, "bands": -(-out_height // rows), "bytes": need, "limit": limit}


def render_bands(params: P.GaussianParams, height: int, width: int, rows: int, *,
                 backend: str = "auto"):
    """Yields the height x width render of `params` as float32 bands [<= rows, width, 3],
    top to bottom. Each band renders the Gaussians shifted into a rows x width frame (one
    compiled program for every band; the last is cropped), so memory is one band.

    The shift is `params.normalized_to_pixel` and `pixel_to_normalized` on the means as a
    numpy array (in their dtype): done with jnp, each operation would compile a program of
    its own. One band (rows >= height) is rendered unshifted, as `render` would.

    A GaussianParams set is first padded to `params.row_bucket` rows with rows that render
    nothing (`params.pad_rows`: the same pairs and the same image), so that decoding files whose
    N differ a little reuses one compiled program, in a process and in the persistent cache."""
    if isinstance(params, P.GaussianParams):
        params = P.pad_rows(params, P.row_bucket(params.num))
    if rows >= height:
        yield np.asarray(render(params, height, width, backend=backend))
        return
    pixel = P.normalized_to_pixel(np.asarray(params.means), height, width)
    for y0 in range(0, height, rows):
        shifted = pixel - np.asarray([0.0, y0], pixel.dtype)
        band = params.replace(means=jax.device_put(P.pixel_to_normalized(shifted, rows,
                                                                         width)))
        img = np.asarray(render(band, rows, width, backend=backend))
        yield img[: min(rows, height - y0)]


def decompress_to_file(data: bytes, path: str | os.PathLike, *, width: int | None = None,
                       height: int | None = None, scale: float | None = None,
                       bit_depth: int = 8, backend: str = "auto", overwrite: bool = False,
                       memory_limit: int | str | None = None) -> dict:
    """Decodes a .ssplat file into an image file, in bounded memory.

    The size is checked against the memory limit from the header alone, before anything is
    allocated (`decode_plan`). PNG outputs render and stream in bands of rows, so a
    65536 x 65536 decode needs about 0.7 GB plus 400 B per Gaussian; other formats render the
    whole image.

    Returns:
      {"height", "width", "bands", "memory_estimate", "memory_limit"}.

    Raises:
      CodecError, ValueError (bad size options, an unknown extension), MemoryLimitError,
      OSError.
    """
    info = codec.read_info(data)
    fmt = sio.output_format(path, bit_depth)
    oh, ow = output_size(info.height, info.width, out_width=width, out_height=height,
                         scale=scale)
    plan = decode_plan(info.num_gaussians, oh, ow, banded=fmt == "PNG",
                       memory_limit=memory_limit)
    params, h, w = codec.decode(data)
    if (oh, ow) != (h, w):
        params = rescale_params(params, (h, w), (oh, ow))
    backend = resolve_backend(backend, forward_only=True)  # no probe: a decode has no backward
    if fmt == "PNG":
        sio.save_png_bands(path, oh, ow, render_bands(params, oh, ow, plan["rows"],
                                                      backend=backend),
                           bit_depth=bit_depth, overwrite=overwrite)
    else:
        (image,) = render_bands(params, oh, ow, oh, backend=backend)
        sio.save_image(path, image, bit_depth=bit_depth, overwrite=overwrite)
    return {"height": oh, "width": ow, "bands": plan["bands"],
            "memory_estimate": plan["bytes"], "memory_limit": plan["limit"]}


def _choose_gaussians(image, cr: float, gaussians, method: str, config: "FitConfig",
                      key: jax.Array, progress: bool, *, workdir: Path | None = None,
                      resume: bool = True, run_info: dict | None = None,
                      pilot_steps: int | None = None) -> tuple[int, dict | None, tuple | None,
                                                                Path | None]:
    """How many Gaussians to train, and where.

    `gaussians` "paper" or N: as `codec.rate.gaussians_for_budget`. "auto": by the pilot fits
    of `gaussian_count.choose_num_gaussians` (config.backend must be a concrete name). With a
    workdir, full-length pilots checkpoint to workdir/gaussians_search/n<N>, the search's
    record goes to workdir/gaussians_search.json, and a resumed run of the same image, method,
    seed, CR, config (steps included) and pilot_steps reuses both.

    Returns:
      (n, search record or None, (params, history) of the chosen full-length pilot or None,
      the workdir for the final `train.fit`: the chosen pilot's, else `workdir`).
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    if gaussians != "auto":
        return gaussians_for_budget(h, w, cr, gaussians), None, None, workdir
    from smartsplat_jax.gaussian_count import choose_num_gaussians, pilot_dir
    from smartsplat_jax.train.loop import run_fingerprint

    search_dir = None if workdir is None else Path(workdir) / "gaussians_search"

    def fit_dir(search):
        full = search["pilot_steps"] == config.steps
        return pilot_dir(search_dir, search["n"]) if full and search_dir else workdir

    # steps too (a resumable change for checkpoints): the best N depends on the run's length.
    fingerprint = run_fingerprint(image, 0, config, None,
                                  {**(run_info or {}), "pilot_steps": pilot_steps,
                                   "steps": config.steps})
    record_path = None if workdir is None else Path(workdir) / "gaussians_search.json"
    if record_path is not None and resume and record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
            search = record["search"]
            if progress:
                print(f"gaussians=auto: N={search['n']} (the search in {record_path})")
            return int(search["n"]), search, None, fit_dir(search)
    log = (lambda line: print(f"gaussians=auto: {line}", flush=True)) if progress else None
    n, search, fitted = choose_num_gaussians(
        image, cr, method=method, key=key, backend=config.backend, config=config,
        pilot_steps=pilot_steps, workdir=search_dir, resume=resume, run_info=run_info, log=log,
        progress=progress)
    if progress:
        print(f"gaussians=auto: N={n} (paper {search['n_paper']}), "
              f"{len(search['trials'])} pilots in {search['seconds']:.1f} s", flush=True)
    if record_path is not None:
        sio.atomic_write_bytes(record_path, sio.json_bytes({"fingerprint": fingerprint,
                                                            "search": search}, indent=1))
    return n, search, fitted, fit_dir(search)


def compress_image(image_path: str | os.PathLike, *, cr: float = 20.0,
                   method: str = "smartsplat", steps: int = 1000, backend: str = "auto",
                   seed: int = 0, gaussians="paper", progress: bool = True,
                   checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                   auto_pilot_steps: int | None = None, **overrides) -> tuple[bytes, dict]:
    """Compresses an image file to .ssplat bytes (no output file written).

    `gaussians`: how many Gaussians the budget buys: "paper" (N = floor(3HW / (7 CR))), N
    (`codec.rate.gaussians_for_budget`) or "auto" (the N whose short pilot fit decodes best
    at the budget, `gaussian_count`; result["gaussians_search"] has the pilots, each of
    `auto_pilot_steps` steps, None: the whole run). `checkpoint_dir`: a folder for training
    checkpoints (resumed from when they belong to this run, see `train.fit`; None: none).
    `overrides` are FitConfig fields (qat_steps, lambda_l1, lr_*, checkpoint_every, ...).

    Returns:
      (data, result): the file's bytes and a dict with height, width, num_gaussians,
      file_gaussians, file_bytes, actual_cr, psnr (of the decoded file), psnr_float, timings,
      resumed_from, rollbacks and diverged (None, or the `TrainingDiverged` whose last good
      parameters `data` encodes).
    """
    from smartsplat_jax.train import config_for_method, initialize
    from smartsplat_jax.train.sharded import mesh_devices

    config = config_for_method(method, steps=steps, backend=backend, **overrides)
    resolved = resolve_backend(config.backend)  # once, before anything is compiled
    config = dataclasses.replace(config, backend=resolved)
    image = sio.load_image(image_path)
    h, w = image.shape[:2]
    key = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    run_info = {"method": method, "seed": seed, "cr": float(cr), "gaussians": str(gaussians)}
    n, search, fitted, fit_dir = _choose_gaussians(
        image, cr, gaussians, method, config, key, progress, workdir=checkpoint_dir,
        resume=resume, run_info=run_info, pilot_steps=auto_pilot_steps)
    budget = byte_budget(h, w, cr)
    diverged = None
    if fitted is not None:  # the chosen pilot of gaussians="auto" is the whole run
        params, history = fitted
    else:
        params0, _ = initialize(method, key, image, n, devices=mesh_devices(config.devices))
        params, history, diverged = _train(method, image, params0, config, key, budget,
                                           progress=progress, workdir=fit_dir, resume=resume,
                                           run_info=run_info)
    params = _as_gaussian(params)
    data, rendered, info = _encode_and_decode(image, params, history, config, budget,
                                              history.get("backend") or resolved)
    result = {"image": str(image_path), "height": h, "width": w, "cr": float(cr),
              "method": method, "gaussians": gaussians, "num_gaussians": n,
              "gaussians_search": search, "steps": steps,
              "psnr": metrics.psnr(rendered, image), "seconds": time.perf_counter() - t0,
              "resumed_from": history["resumed_from"],
              "rollbacks": len(history.get("rollbacks", [])), "diverged": diverged, **info}
    return data, result


def check_workdir(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` if needed and checks it is writable; raises OSError naming it.

    The probe is a temporary file with a name of its own, so processes starting on the same
    folder at once (a distributed benchmark's) never remove each other's probe."""
    d = Path(workdir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"workdir {d} is not writable ({e.strerror or e})") from None
    return d


def save_params(path: str | os.PathLike, params: P.GaussianParams, height: int, width: int) -> None:
    """Writes raw parameters, the image size and the compositing (`blend`) as .npz,
    atomically."""
    buf = io.BytesIO()
    np.savez(buf, height=height, width=width, blend=bool(params.blend),
             **{k: np.asarray(getattr(params, k)) for k in params.leaf_names})
    sio.atomic_write_bytes(path, buf.getvalue())


def load_params(path: str | os.PathLike) -> tuple[P.GaussianParams, int, int]:
    """(params, height, width) from a file written by `save_params`."""
    with np.load(path) as d:
        params = P.GaussianParams(**{k: jax.numpy.asarray(d[k]) for k in
                                     P.GaussianParams._WIDTHS},
                                  blend=bool(d["blend"]) if "blend" in d else False)
        return params.validate(), int(d["height"]), int(d["width"])


def _curve(history: dict) -> "object":
    from smartsplat_jax.viz import line_plot

    series = {"loss": (history["step"], history["loss"]),
              "train PSNR (dB)": (history["step"], history["train_psnr"])}
    if history["eval"]:
        series["eval PSNR (dB)"] = ([e["step"] for e in history["eval"]],
                                    [e["psnr"] for e in history["eval"]])
    return line_plot(series, xlabel="step")


def run_fit(image_path: str | os.PathLike, workdir: str | os.PathLike, *, cr: float = 20.0,
            method: str = "smartsplat", steps: int = 2000, backend: str = "auto",
            seed: int = 0, gaussians="paper", resume: bool = True, progress: bool = True,
            visualize: bool = True, auto_pilot_steps: int | None = None, **overrides) -> dict:
    """Compresses one image with `method` and writes the outputs listed in the module doc.

    Args:
      image_path: the image file.
      workdir: output folder (created).
      cr: target compression ratio: the file has at most floor(3 H W / CR) bytes.
      method: "smartsplat", "random", "gaussianimage-rs", "gaussianimage-cholesky", "lig" or
        "imagegs".
      steps: training steps.
      backend: renderer backend.
      seed: PRNG seed of the initialization.
      gaussians: how many Gaussians the budget buys: "paper" (N = floor(3HW / (7 CR)), as
        the paper), N (`codec.rate.gaussians_for_budget`) or "auto": the N whose pilot fit
        decodes best at the budget (`gaussian_count.choose_num_gaussians`; the pilots are in
        metrics.json's "gaussians_search" and workdir/gaussians_search.json, which a resumed
        run reuses; full-length pilots checkpoint under workdir/gaussians_search/).
      auto_pilot_steps: steps of each pilot of gaussians="auto" (None: the whole run, exact;
        the chosen pilot is then the result. Fewer: cheaper, biased towards more Gaussians).
      resume: continue from workdir/checkpoints when they belong to this run (same image,
        method, seed, CR, N and training config; another run's raise ValueError); False:
        delete them and start over (see `train.fit`).
      overrides: further FitConfig fields (qat_steps, lambda_l1, lr_*, chunk_steps, ...).

    Returns:
      The metrics dict that is also written to workdir/metrics.json.

    Raises:
      ImageError, ValueError, OSError: bad inputs, with messages naming them.
      TrainingDiverged: NaN/Inf that retries did not cure; the best parameters so far are
        written first (image.ssplat, params.npz, recon.png, metrics.json with "diverged").
      TrainingInterrupted: SIGINT/SIGTERM, after writing a checkpoint.
    """
    from smartsplat_jax.train import TrainingDiverged, config_for_method, initialize
    from smartsplat_jax.train.sharded import mesh_devices

    config = config_for_method(method, steps=steps, backend=backend, **overrides)
    resolved = resolve_backend(config.backend)  # once, before anything is compiled
    config = dataclasses.replace(config, backend=resolved)
    out = check_workdir(workdir)
    image = sio.load_image(image_path)
    h, w = image.shape[:2]
    key = jax.random.PRNGKey(seed)
    run_info = {"method": method, "seed": seed, "cr": float(cr), "gaussians": str(gaussians)}
    search_t0 = time.perf_counter()
    n, search, fitted, fit_dir = _choose_gaussians(
        image, cr, gaussians, method, config, key, progress, workdir=out, resume=resume,
        run_info=run_info, pilot_steps=auto_pilot_steps)
    search_seconds = time.perf_counter() - search_t0

    t0 = time.perf_counter()
    params0, info = initialize(method, key, image, n, devices=mesh_devices(config.devices))
    jax.block_until_ready(params0)
    init_seconds = time.perf_counter() - t0
    if visualize:  # renders the initialization once, for the pictures and its PSNR
        from smartsplat_jax.viz import save_init_visualization

        init_psnr = save_init_visualization(
            out, image, _as_gaussian(params0),
            info if method == "smartsplat" else {"num_variational": 0},
            max_points=20000)["psnr"]
    else:
        init_psnr = metrics.psnr(render(params0, h, w, backend=resolved), image)

    budget = byte_budget(h, w, cr)
    diverged = None
    if fitted is not None:  # the chosen pilot of gaussians="auto" is the whole run
        params, history = fitted
    else:
        params, history, diverged = _train(method, image, params0, config, key, budget,
                                           workdir=fit_dir, resume=resume, run_info=run_info,
                                           progress=progress)
    params = _as_gaussian(params)
    data, rendered, info = _encode_and_decode(image, params, history, config, budget,
                                              history.get("backend") or resolved)
    try:
        ms = metrics.ms_ssim(rendered, image)
        ms_note = None
    except ValueError as e:
        ms, ms_note = None, str(e)
    result = {
        "image": str(image_path), "height": h, "width": w, "cr": float(cr), "method": method,
        "gaussians": gaussians, "num_gaussians": n, "gaussians_search": search,
        "steps": config.steps, "seed": seed,
        "psnr": metrics.psnr(rendered, image), "ssim": metrics.ssim(rendered, image),
        "ms_ssim": ms, "ms_ssim_note": ms_note, **info, "init_psnr": init_psnr,
        # metrics.json is strict JSON: an infinite PSNR (exact reconstruction) is written as
        # null, and this flag says so.
        "lossless": bool(np.array_equal(rendered, image)),
        "init_seconds": init_seconds, "search_seconds": search_seconds,
        "train_seconds": history["train_seconds"],
        "compile_seconds": history["compile_seconds"],
        # Steady-state rate (compilation excluded); None after a resume, whose timing is split.
        "it_per_s": None if history["resumed_from"] is not None or diverged else
        config.steps / max(history["train_seconds"] - history["compile_seconds"], 1e-9),
        "resumed_from": history["resumed_from"],
        "rollbacks": len(history.get("rollbacks", [])),
        "nonfinite_grad_chunks": len(history.get("nonfinite_grads", [])),
        "diverged": None if diverged is None else {"message": str(diverged),
                                                   "step": diverged.step,
                                                   "params_step": diverged.good_step},
        "backend": history.get("backend") or resolve_backend(config.backend),
        "optimizer": config.optimizer,
        "loss": config.loss, "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(), "jax_version": jax.__version__,
    }
    sio.atomic_write_bytes(out / "image.ssplat", data)
    sio.save_image(out / "recon.png", rendered, overwrite=True)
    save_params(out / "params.npz", params, h, w)
    buf = io.BytesIO()
    _curve(history).save(buf, format="PNG")
    sio.atomic_write_bytes(out / "curve.png", buf.getvalue())
    sio.atomic_write_bytes(out / "history.json", sio.json_bytes(history, indent=1))
    sio.atomic_write_bytes(out / "metrics.json", sio.json_bytes(result))
    if diverged is not None:
        raise TrainingDiverged(
            f"{diverged}\nThe parameters of step {diverged.good_step} (the last finite ones) "
            f"were written to {out}: image.ssplat ({result['psnr']:.2f} dB), params.npz, "
            "recon.png, metrics.json", step=diverged.step, good_step=diverged.good_step,
            params=params, history=history) from None
    return result
