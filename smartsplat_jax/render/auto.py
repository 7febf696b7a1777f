"""Choosing the rasterizer for backend="auto": `pallas` only where it runs and is faster.

Rule, per device kind (e.g. "NVIDIA H200"), decided once per process:
  * not a GPU, or a GPU the Triton kernels do not support (compute capability < 8.0, such as
    Colab's T4): `xla`;
  * otherwise a probe times forward+backward of both backends on a fixed synthetic scene
    (1024 x 1024, CR 50, SmartSplat-like scales; medians of 5 after warm-up) and picks `pallas`
    when it is at least `_MARGIN` times faster; if the kernels fail to compile or run, `xla`.
Each decision and its reason is logged once (logger "smartsplat_jax.render", level INFO).

The decision is memoized per device kind. Both backends compute the same image up to float
rounding, so the memo changes speed, never results.

Callers resolve "auto" once, eagerly, before they compile anything (`train.fit`, the
pipeline's compress and fit, the CLI and the launchers through them) and pass the concrete
name down. A render traced with "auto" (a user's own `jax.jit`) never runs the probe: it takes
the decision already made for the device, or else the probe-free rule of `forward_only`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import statistics
import time

import jax
import jax.numpy as jnp

from smartsplat_jax import params as P
from smartsplat_jax.init.variational import s_base, variational_scales

__all__ = ["auto_backend", "decisions", "median_seconds", "synthetic_scene", "traced_choice"]

log = logging.getLogger("smartsplat_jax.render")

_MARGIN = 1.1
_PROBE_SIZE = 1024
_PROBE_CR = 50.0
_PROBE_REPEATS = 5
_decisions: dict[str, tuple[str, str]] = {}


def decisions() -> dict[str, tuple[str, str]]:
    """{device kind: (backend, reason)} for the decisions taken so far in this process."""
    return dict(_decisions)


def synthetic_scene(key: jax.Array, height: int, width: int, n: int) -> P.GaussianParams:
    """N Gaussians with SmartSplat-like initial scales for an H x W image (no image needed).

    Uniform means; per-axis scales s_base exp(-w/2) px with w ~ U(0, 1) (SPEC §4.4, Eq. 15
    and 17); uniform colours, normal raw angles, opacity 1. Used by the backend probe and
    `experiments.bench_render`.
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return P.GaussianParams.create(
        means=jax.random.uniform(k1, (n, 2), minval=-1.0, maxval=1.0),
        scales=variational_scales(jax.random.uniform(k2, (n, 2)), s_base(height, width, n)),
        colors=jax.random.uniform(k3, (n, 3)),
        rotation=jax.random.normal(k4, (n, 1)))


def median_seconds(fn, *args, repeats: int, warmup: int = 2) -> float:
    """Median wall seconds of fn(*args) over `repeats` calls, after `warmup` calls
    (each call waited for with block_until_ready)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _probe_params(size: int, cr: float) -> P.GaussianParams:
    return synthetic_scene(jax.random.PRNGKey(0), size, size, P.num_gaussians(size, size, cr))


def _time_fwd_bwd(backend: str, params: P.GaussianParams, size: int) -> float:
    """Median seconds of one forward+backward of `backend` on `params` (after warm-up)."""
    from smartsplat_jax.render import pair_capacity, render

    capacity = pair_capacity(params, size, size) if backend == "pallas" else None
    target = jnp.full((size, size, 3), 0.5)
    step = jax.jit(jax.grad(lambda p: jnp.mean(jnp.abs(
        render(p, size, size, backend=backend, capacity=capacity) - target))))
    return median_seconds(step, params, repeats=_PROBE_REPEATS, warmup=1)


def _decide(device) -> tuple[str, str]:
    from smartsplat_jax.render import pallas

    ok, why = pallas.triton_supported(device)
    if not ok:
        return "xla", why
    def measure():
        params = _probe_params(_PROBE_SIZE, _PROBE_CR)
        return (_time_fwd_bwd("xla", params, _PROBE_SIZE),
                _time_fwd_bwd("pallas", params, _PROBE_SIZE))

    try:
        # A fresh thread has JAX's trace state clean, so the probe runs eagerly whoever calls.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            t_xla, t_pallas = pool.submit(measure).result()
    except Exception as e:  # noqa: BLE001 - any failure of the kernels means: use xla
        return "xla", f"the pallas kernels failed on {why}: {type(e).__name__}: {e}"
    speed = t_xla / t_pallas
    probe = (f"probe {_PROBE_SIZE}x{_PROBE_SIZE} CR {_PROBE_CR:g} forward+backward: "
             f"xla {1e3 * t_xla:.2f} ms, pallas {1e3 * t_pallas:.2f} ms on {why}")
    if speed >= _MARGIN:
        return "pallas", f"pallas is {speed:.2f}x faster ({probe})"
    return "xla", f"pallas is not {_MARGIN:g}x faster ({speed:.2f}x; {probe})"


def traced_choice(device=None) -> str:
    """What "auto" means inside a function being traced: the decision already taken for the
    device (by `auto_backend`), else the probe-free `forward_only` rule. Never probes and
    never records a decision, so tracing has no side effect."""
    device = jax.devices()[0] if device is None else device
    decided = _decisions.get(f"{device.platform}:{device.device_kind}")
    return decided[0] if decided else auto_backend(device, forward_only=True)


def auto_backend(device=None, *, forward_only: bool = False) -> str:
    """The backend "auto" means on `device` (default: the first default device).

    `forward_only` (decoding: a render without gradients): "pallas" wherever its kernels
    compile (GPUs from sm_80), with no timing probe, whose forward-and-backward programs
    would cost a decode more than they save; otherwise "xla"."""
    device = jax.devices()[0] if device is None else device
    if forward_only:
        if device.platform != "gpu":
            return "xla"
        from smartsplat_jax.render import pallas

        return "pallas" if pallas.triton_supported(device)[0] else "xla"
    kind = f"{device.platform}:{device.device_kind}"
    if kind not in _decisions:
        if device.platform != "gpu":
            _decisions[kind] = ("xla", f"{device.platform} device: the xla rasterizer is the fast "
                                "one there (Pallas kernels only run interpreted)")
        else:
            _decisions[kind] = _decide(device)
        log.info("render backend 'auto' on %s -> %s: %s", device.device_kind, *_decisions[kind])
    return _decisions[kind][0]
