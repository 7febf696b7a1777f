"""SSIM building blocks shared by the training loss and the metrics (SPEC §5, §7).

One definition of the window and of the SSIM / contrast-structure maps, used three ways:
`losses.ssim` pads with zeros ('same' output, as fused-ssim) and evaluates the whole image;
`metrics` feeds the same functions image bands (pre-padded for 'same', unpadded for the
'valid' maps of MS-SSIM) so that 16K images run in bounded memory; the sharded loss
(`train.sharded`) sums the maps of each device's block over the pixels it owns. The training
losses differentiate through `weighted_ssim_to_target`, whose backward is hand-written.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["WINDOW_SIZE", "WINDOW_SIGMA", "C1", "C2", "gaussian_window", "window_taps",
           "blur_adjoint", "window_stats", "ssim_from_stats", "ssim_maps_valid",
           "weighted_ssim_to_target"]

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
C1 = 0.01**2  # (K1 * data_range)^2 with data range 1
C2 = 0.03**2
HALF = WINDOW_SIZE // 2


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """[size] float64 1D Gaussian taps exp(-k^2 / (2 sigma^2)), k = -size//2 .. size//2, sum 1."""
    k = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(k**2) / (2.0 * sigma**2))
    return g / g.sum()


def _correlate_valid(x: jnp.ndarray, taps: tuple[float, ...]) -> jnp.ndarray:
    """Separable 'valid' correlation of [C, H, W] with taps along H then W -> [C, H-k+1, W-k+1].

    Channels first: each tap is a contiguous run of rows and columns (channels-last stacks
    of 9-15 statistics were measured 3x slower on CPU). The barrier keeps XLA from fusing
    the vertical sum into each horizontal tap, which would recompute it k times (measured
    17x slower on CPU). XLA's CPU convolution (two 1-D kernels, each map a batch entry) is
    not used: inside a lax.scan of training steps it was 2.3x faster with jax 0.10 (15 maps
    of 522 x 778: 5.2 against 14.0 ms) and as fast with jax 0.12, but as a plain jitted call
    330-370 ms against 4-10 ms with both, which evaluation and rate control would pay.
    The training loss, which always runs inside such a scan, takes it there
    (`_correlate_in_loop`).
    """
    k = len(taps)
    h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
    acc = sum(taps[i] * x[:, i : i + h] for i in range(k))
    acc = jax.lax.optimization_barrier(acc)
    return sum(taps[i] * acc[:, :, i : i + w] for i in range(k))


def _correlate_conv(x: jnp.ndarray, taps: tuple[float, ...]) -> jnp.ndarray:
    """`_correlate_valid` as two 1-D convolutions, the maps as the batch (equal to float
    rounding)."""
    kernel = jnp.asarray(taps, x.dtype)
    rows, cols = kernel.reshape(1, 1, -1, 1), kernel.reshape(1, 1, 1, -1)
    v = jax.lax.conv_general_dilated(x[:, None], rows, (1, 1), "VALID")
    return jax.lax.conv_general_dilated(v, cols, (1, 1), "VALID")[:, 0]


def _correlate_in_loop(x: jnp.ndarray, taps: tuple[float, ...]) -> jnp.ndarray:
    """`_correlate_valid` for a caller that runs inside a compiled loop (the training
    loss, inside `train.fit`'s `lax.scan` of steps): on CPU the convolutions of
    `_correlate_conv`, which XLA emits there as a threaded loop nest, elsewhere the slices.
    The choice is made when the program is lowered (`jax.lax.platform_dependent`).

    Measured on a 2-core CPU with jax 0.10 (`experiments.bench_render`, the quick start's
    768 x 512 scene): the SmartSplat loss's forward+backward 16.9 ms a step against 28.4 ms
    with the slices, the whole training step 93 against 102 ms (with jax 0.12: the step 79
    against 86 ms, the loss timed alone as fast either way). As a plain jitted call the
    same loss's forward+backward takes 0.54 s against 0.04 s (XLA lays the convolution out
    channels-last there, b01f), so everything that is not a training step keeps the slices.
    """
    return jax.lax.platform_dependent(
        x, cpu=functools.partial(_correlate_conv, taps=taps),
        default=functools.partial(_correlate_valid, taps=taps))


def blur_adjoint(g: jnp.ndarray, taps: tuple[float, ...], in_loop: bool = False) -> jnp.ndarray:
    """The adjoint of `_correlate_valid` ([C, h, w] -> [C, h+k-1, w+k-1]): with symmetric
    taps, the same correlation of the cotangent zero-padded by k - 1 on every side ('full').
    Autodiff would instead transpose each of the 2k shifted slices into a full-size
    pad-and-add (13x slower). `in_loop`: lowered for a caller inside a compiled loop
    (`_correlate_in_loop`)."""
    k = len(taps)
    correlate = _correlate_in_loop if in_loop else _correlate_valid
    return correlate(jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1))), taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _blur_valid(x: jnp.ndarray, taps: tuple[float, ...]) -> jnp.ndarray:
    """'valid' Gaussian blur of [C, H, W] with an exact, cheap adjoint (`blur_adjoint`)."""
    return _correlate_valid(x, taps)


def _blur_valid_fwd(x, taps):
    return _correlate_valid(x, taps), None


def _blur_valid_bwd(taps, _, g):
    return (blur_adjoint(g, taps),)


_blur_valid.defvjp(_blur_valid_fwd, _blur_valid_bwd)


def window_taps() -> tuple[float, ...]:
    """The 11 taps of the SSIM window as Python floats (static under jit)."""
    return tuple(float(t) for t in gaussian_window())


def ssim_from_stats(mu_x, mu_y, e_xx, e_yy, e_xy):
    """(ssim_map, cs_map) from the windowed means mu and second moments e (any shape):
    l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), cs = (2 s_xy + C2) / (s_xx + s_yy + C2)
    with s_ab = e_ab - mu_a mu_b; SSIM = l * cs."""
    sxx = e_xx - mu_x * mu_x
    syy = e_yy - mu_y * mu_y
    sxy = e_xy - mu_x * mu_y
    cs_map = (2.0 * sxy + C2) / (sxx + syy + C2)
    ssim_map = (2.0 * mu_x * mu_y + C1) / (mu_x * mu_x + mu_y * mu_y + C1) * cs_map
    return ssim_map, cs_map


def window_stats(x: jnp.ndarray, y: jnp.ndarray,
                 in_loop: bool = False) -> tuple[jnp.ndarray, ...]:
    """The 'valid' windowed statistics of [C, H, W] x and y: (mu_x, mu_y, e_xx, e_yy, e_xy),
    each [C, H - 10, W - 10], blurred as one stack (differentiable, cheap adjoint).
    `in_loop`: lowered for a caller inside a compiled loop (`_correlate_in_loop`; autodiff
    then differentiates the convolutions: `weighted_ssim_to_target` writes its own)."""
    c = x.shape[0]
    stack = jnp.concatenate([x, y, x * x, y * y, x * y], 0)
    stats = _correlate_in_loop(stack, window_taps()) if in_loop else _blur_valid(
        stack, window_taps())
    return tuple(stats[i * c:(i + 1) * c] for i in range(5))


def ssim_maps_valid(x: jnp.ndarray, y: jnp.ndarray):
    """SSIM and contrast-structure maps with the 11x11, sigma 1.5 window, 'valid' extent.

    Args:
      x, y: [H, W, C] float arrays, data range 1, H, W >= 11.

    Returns:
      (ssim_map, cs_map): each [H - 10, W - 10, C].
    """
    stats = window_stats(jnp.moveaxis(x, -1, 0), jnp.moveaxis(y, -1, 0))  # [C, H, W] blurs
    ssim_map, cs_map = ssim_from_stats(*stats)
    return jnp.moveaxis(ssim_map, 0, -1), jnp.moveaxis(cs_map, 0, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def weighted_ssim_to_target(x: jnp.ndarray, y: jnp.ndarray, weight, pad: int) -> jnp.ndarray:
    """sum(weight * SSIM map) of x against a constant target y. Scalar.

    Args:
      x, y: [H, W, C] float arrays, data range 1.
      weight: a scalar (1 / count: a mean) or [H + 2 pad - 10, W + 2 pad - 10, C] per-pixel
        weights (a 0/1 mask: the pixels a block owns).
      pad: zero padding of x and y on every side before the 'valid' maps (HALF: 'same' maps,
        as fused-ssim; 0: 'valid'); H + 2 pad, W + 2 pad >= 11.

    Lowered for the training step, inside a compiled loop (`_correlate_in_loop`): on CPU,
    as a plain jitted call on a large image it is slow (forward+backward at 768 x 512:
    0.54 s, against 0.04 s with the slices).

    Gradients flow to x only (y and weight get zeros). The backward is fused-ssim's,
    written out: the partial derivatives of the map with respect to each pixel's windowed
    statistics, weighted, then one blur adjoint of the three maps (2.7x faster than
    autodiff on CPU for 768 x 512).
    """
    return _weighted_ssim_fwd(x, y, weight, pad)[0]


def _padded_channels_first(v: jnp.ndarray, pad: int) -> jnp.ndarray:
    return jnp.pad(jnp.moveaxis(v, -1, 0), ((0, 0), (pad, pad), (pad, pad)))


def _weighted_ssim_fwd(x, y, weight, pad):
    # S = l * cs with l = A1 / B1, cs = A2 / B2 (ssim_from_stats). The partial derivatives
    # of S with respect to each pixel's statistics:
    #   dS/de_xy = 2 A1 / (B1 B2),  dS/de_xx = -S / B2,
    #   dS/dmu_x = cs (2 mu_y B1 - 2 mu_x A1) / B1^2 + l (2 mu_x A2 / B2^2 - 2 mu_y / B2),
    # (s_xx = e_xx - mu_x^2 and s_xy = e_xy - mu_x mu_y carry mu_x into cs).
    weight = jnp.asarray(weight, x.dtype)
    wc = jnp.moveaxis(weight, -1, 0) if weight.ndim else weight
    mu_x, mu_y, e_xx, e_yy, e_xy = window_stats(_padded_channels_first(x, pad),
                                                _padded_channels_first(y, pad), in_loop=True)
    a1 = 2.0 * mu_x * mu_y + C1
    b1 = mu_x * mu_x + mu_y * mu_y + C1
    a2 = 2.0 * (e_xy - mu_x * mu_y) + C2
    b2 = (e_xx - mu_x * mu_x) + (e_yy - mu_y * mu_y) + C2
    lum, cs = a1 / b1, a2 / b2
    s = lum * cs
    d_mu = (cs * (2.0 * mu_y * b1 - 2.0 * mu_x * a1) / (b1 * b1)
            + lum * (2.0 * mu_x * a2 / (b2 * b2) - 2.0 * mu_y / b2))
    partials = jnp.concatenate([d_mu * wc, -s / b2 * wc, 2.0 * a1 / (b1 * b2) * wc], 0)
    return jnp.sum(wc * s), (jnp.moveaxis(x, -1, 0), jnp.moveaxis(y, -1, 0), partials, weight)


def _weighted_ssim_bwd(pad, res, g):
    xc, yc, partials, weight = res
    c, (h, w) = xc.shape[0], xc.shape[1:]
    back = blur_adjoint(partials * g, window_taps(), in_loop=True)  # onto the padded grid
    back = back[:, pad:pad + h, pad:pad + w]
    gx = back[:c] + 2.0 * xc * back[c:2 * c] + yc * back[2 * c:]
    return jnp.moveaxis(gx, 0, -1), jnp.zeros_like(jnp.moveaxis(yc, 0, -1)), jnp.zeros_like(weight)


weighted_ssim_to_target.defvjp(_weighted_ssim_fwd, _weighted_ssim_bwd)
