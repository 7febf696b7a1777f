"""One image's loss over many devices: the image cut into horizontal bands, one per device.

    mesh = band_mesh(jax.devices()[:4])
    target = shard_target(image, mesh)                       # [D, rows + 10, W + 10, 3]
    loss, mse = sharded_loss(params, target, h, w, mesh, lambda_l1=0.9)
    (loss, mse), grads = jax.value_and_grad(sharded_loss, has_aux=True)(params, target, h, w,
                                                                        mesh)

Equal to the single-device SmartSplat loss, `losses.smartsplat_loss(render(params, h, w),
image, lambda_l1)`, and to its gradients, up to float rounding:
  * Device d owns the rows [d * rows, (d + 1) * rows), rows = ceil(H / D), and renders them
    with a halo of `filters.HALF` = 5 rows above and below (the SSIM window's reach): the
    Gaussians, replicated on every device, are shifted into the band's frame and the xla
    rasterizer culls those that miss it, so a device draws only its band's pairs.
  * Pixels outside the image (the halo beyond the first and last rows, and the padding rows
    when D does not divide H) are zero in the render and the target, and 5 zero columns pad
    both sides: exactly the zero padding of the 'same' SSIM. The SSIM map of a band's own
    rows, computed 'valid' over the band and its halo, is then the global map's.
  * Each device sums |render - target| and the SSIM map over its own rows inside the image;
    `psum` adds the bands. Gradients flow back through the shard_map to the replicated
    parameters (their cotangents are summed over the devices).

Memory per device: the parameters and their projection (O(N)), plus one band of
(rows + 10) x W pixels: the render, the target, SSIM's statistics and the rasterizer's tile
accumulators. XLA's temporary buffers for the loss and its gradients measured 235-240 bytes
per band pixel (512 x 512 and 1024 x 512 images, 2 and 4 CPU devices, CR 50).

Limits: bands only (a 1 x D mesh); the halo rows are rendered twice (by both neighbours), a
cost of 10 / rows of the render; the SSIM gradient is autodiff's, not the hand-written one
of `losses`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from smartsplat_jax import filters
from smartsplat_jax import params as P
from smartsplat_jax.render.xla import render_xla

__all__ = ["AXIS", "band_mesh", "band_rows", "shard_target", "sharded_loss"]

AXIS = "bands"
HALO = filters.HALF


def band_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all), one band of rows each."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("band_mesh: devices is empty; give at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def band_rows(height: int, mesh: Mesh) -> int:
    """Rows each device owns: ceil(H / D)."""
    return math.ceil(height / mesh.devices.size)


def shard_target(image, mesh: Mesh) -> jax.Array:
    """The target cut into the mesh's bands: [D, rows + 10, W + 10, 3], band d holding rows
    [d * rows - 5, (d + 1) * rows + 5) of the image with zeros outside it (and 5 zero
    columns each side), placed one band per device."""
    img = np.asarray(image)
    img = img.astype(np.result_type(img.dtype, np.float32))  # float32, or float64 kept
    h, w = img.shape[:2]
    d, rows = mesh.devices.size, band_rows(h, mesh)
    padded = np.zeros((d * rows + 2 * HALO, w + 2 * HALO, img.shape[2]), img.dtype)
    padded[HALO:HALO + h, HALO:HALO + w] = img
    bands = np.stack([padded[i * rows:i * rows + rows + 2 * HALO] for i in range(d)])
    return jax.device_put(bands, NamedSharding(mesh, PartitionSpec(AXIS)))


def _band_sums(params: P.GaussianParams, target: jax.Array, height: int, width: int,
               rows: int, with_ssim: bool):
    """(sum |r - t|, sum (r - t)^2, sum of SSIM) over the band's own rows inside the image
    (SSIM 0 when not `with_ssim`)."""
    band = jax.lax.axis_index(AXIS)
    top = band * rows - HALO  # image row of the band's first (halo) row
    hb = rows + 2 * HALO
    pix = P.normalized_to_pixel(params.means, height, width)
    pix = pix - jnp.stack([jnp.zeros((), pix.dtype), top.astype(pix.dtype)])
    shifted = params.replace(means=P.pixel_to_normalized(pix, hb, width))
    rendered = render_xla(shifted, hb, width)
    image_row = top + jnp.arange(hb)
    inside = ((image_row >= 0) & (image_row < height))[:, None, None]
    rendered = jnp.where(inside, rendered, 0.0)
    rendered = jnp.pad(rendered, ((0, 0), (HALO, HALO), (0, 0)))
    t = target[0]
    own = (image_row[HALO:HALO + rows] < height)[:, None, None]
    diff = jnp.where(own, (rendered - t)[HALO:HALO + rows], 0.0)
    ssim_sum = jnp.zeros((), rendered.dtype)
    if with_ssim:
        ssim_map, _ = filters.ssim_maps_valid(rendered, t)  # [rows, W, 3]: the own rows
        ssim_sum = jnp.sum(jnp.where(own, ssim_map, 0.0))
    return jnp.sum(jnp.abs(diff)), jnp.sum(diff * diff), ssim_sum


@functools.partial(jax.jit, static_argnames=("height", "width", "mesh", "loss"))
def sharded_loss(params: P.GaussianParams, target: jax.Array, height: int, width: int,
                 mesh: Mesh, lambda_l1: float = 0.9, loss: str = "smartsplat"):
    """(loss, mse) of `params` against the banded `target` (`shard_target`) of an H x W
    image, computed band by band on `mesh`: loss "smartsplat" (`losses.smartsplat_loss` of
    the render, weight `lambda_l1`, which may be traced) or "l2" (the MSE). Differentiable
    with respect to `params` (replicated on every device); use has_aux for the mse."""
    if loss not in ("smartsplat", "l2"):
        raise ValueError(f"loss={loss!r} must be smartsplat or l2 for a sharded image")
    rows = band_rows(height, mesh)

    def per_band(p, t):
        sums = _band_sums(p, t, height, width, rows, loss == "smartsplat")
        return tuple(jax.lax.psum(v, AXIS) for v in sums)

    spec = PartitionSpec(AXIS)
    # check_vma=False: the rasterizer's loops start from constants that become per-band
    # values; shard_map then treats every value as varying, and the replicated parameters'
    # cotangents are summed over the bands.
    l1, l2, ssim_sum = jax.shard_map(per_band, mesh=mesh, in_specs=(PartitionSpec(), spec),
                                     out_specs=(PartitionSpec(),) * 3,
                                     check_vma=False)(params, target)
    count = height * width * 3
    mse = l2 / count
    if loss == "l2":
        return mse, mse
    return lambda_l1 * l1 / count + (1.0 - lambda_l1) * (1.0 - ssim_sum / count), mse
