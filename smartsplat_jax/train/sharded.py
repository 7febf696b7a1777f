"""One image's loss over many devices: the image cut into blocks, one per device of a mesh.

    mesh = block_mesh(jax.devices()[:4], (2, 2))             # or band_mesh(devices): D x 1
    target = shard_target(image, mesh)                       # [R, C, rows + 10, cols + 10, 3]
    loss, mse = sharded_loss(params, target, h, w, mesh, lambda_l1=0.9)
    (loss, mse), grads = jax.value_and_grad(sharded_loss, has_aux=True)(params, target, h, w,
                                                                        mesh)

Equal to the single-device SmartSplat loss, `losses.smartsplat_loss(render(params, h, w),
image, lambda_l1)`, and to its gradients, up to float rounding:
  * An R x C mesh cuts the image into R x C blocks of rows = ceil(H / R) by
    cols = ceil(W / C) pixels. The device at (i, j) owns rows [i rows, (i + 1) rows) and
    columns [j cols, (j + 1) cols), and renders them with a halo of `filters.HALF` = 5 pixels
    on every side (the SSIM window's reach): the Gaussians are replicated on every device
    and the xla rasterizer culls those that miss the block, so a device draws only its
    block's pairs. A D x 1 mesh (`band_mesh`) gives bands of rows.
  * Pixels outside the image (the halo beyond its edges, and the padding when R or C does not
    divide H or W) are zero in the render and the target: exactly the zero padding of the
    'same' SSIM. The SSIM map of a block's own pixels, computed 'valid' over the block and
    its halo, is then the global map's.
  * Each block renders its window of the image (`render.xla.Window`): the Gaussians stay in
    the image's pixel frame, so every alpha of a block is the single device's bit for bit
    and only the order of the sums differs.
  * Each device sums |render - target| and the SSIM map over its own pixels inside the
    image; `psum` over both mesh axes adds the blocks. Gradients flow back through the
    shard_map to the replicated parameters (their cotangents are summed over the devices).

Memory per device: the parameters and their projection (O(N)), plus one block of
(rows + 10) x (cols + 10) pixels: the render, the target, SSIM's statistics and the
rasterizer's tile accumulators. XLA's temporary buffers for the loss and its gradients
measured 156-177 bytes per block pixel (512 x 512 and 1024 x 512 images, 1 to 4 CPU devices,
bands and 2 x 2 blocks, CR 20 and 50; the SSIM backward is `filters.weighted_ssim_to_target`'s)
plus about 104 bytes per Gaussian (512 x 512 at CR 20, 4 and 2: 40.9, 43.2 and 45.9 MiB for
N = 5,617, 28,086 and 56,173). With the parameters, their gradients and Adam's two moments
(9 floats each: 144 B per Gaussian) and the target block (12 B per pixel), a device holds
about

    180 B x (rows + 10) x (cols + 10)  +  250 B x N.

A 32768 x 32768 image at CR 50 (N = 9,203,501) on a 4 x 2 mesh of 8 devices: blocks of
8192 x 16384 pixels, 180 B x 134.5 M + 250 B x 9.2 M = 24.2 GB + 2.3 GB, about 27 GB per
device, within an 80 GB GPU (by this formula; not run at that size). The initialization is
shared by the same devices (`init.spread`; the image replicated on each: 12.9 GB at 32K).

Limits: the halo pixels are rendered twice (by both neighbours), a cost of about
10 / rows + 10 / cols of the render.
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
from smartsplat_jax.render.xla import Window, render_xla

__all__ = ["AXES", "block_mesh", "band_mesh", "block_size", "band_rows", "shard_target",
           "sharded_loss", "mesh_shape"]

AXES = ("rows", "cols")
HALO = filters.HALF


def mesh_shape(devices) -> tuple[int, int]:
    """(R, C) of a `FitConfig.devices` value: D -> (D, 1) (bands), (R, C) -> (R, C)."""
    if isinstance(devices, (tuple, list)):
        return int(devices[0]), int(devices[1])
    return int(devices), 1


def mesh_devices(devices) -> list | None:
    """The jax devices a `FitConfig.devices` value runs on: the first R x C of
    `jax.devices()`; None for one device.

    Raises:
      ValueError: more devices than there are.
    """
    r, c = mesh_shape(devices)
    if r * c == 1:
        return None
    available = jax.devices()
    if r * c > len(available):
        raise ValueError(f"devices={devices} needs {r * c} devices but only "
                         f"{len(available)} device(s) are available "
                         f"({available[0].platform}); use 1 to {len(available)}")
    return available[:r * c]


def block_mesh(devices=None, shape: tuple[int, int] | None = None) -> Mesh:
    """An R x C mesh over `devices` (default: all), axes `AXES`, one block each; shape None:
    (len(devices), 1), bands of rows."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("block_mesh: devices is empty; give at least one device")
    r, c = (len(devices), 1) if shape is None else shape
    if r * c != len(devices):
        raise ValueError(f"block_mesh: shape={shape!r} needs {r * c} devices, "
                         f"given {len(devices)}")
    return Mesh(np.asarray(devices).reshape(r, c), AXES)


def band_mesh(devices=None) -> Mesh:
    """A D x 1 mesh over `devices` (default: all), one band of rows each."""
    return block_mesh(devices)


def block_size(height: int, width: int, mesh: Mesh) -> tuple[int, int]:
    """(rows, cols) each device owns: (ceil(H / R), ceil(W / C))."""
    r, c = mesh.devices.shape
    return math.ceil(height / r), math.ceil(width / c)


def band_rows(height: int, mesh: Mesh) -> int:
    """Rows each device owns: ceil(H / R)."""
    return math.ceil(height / mesh.devices.shape[0])


def shard_target(image, mesh: Mesh) -> jax.Array:
    """The target cut into the mesh's blocks: [R, C, rows + 10, cols + 10, 3], block (i, j)
    holding rows [i rows - 5, (i + 1) rows + 5) and columns [j cols - 5, (j + 1) cols + 5)
    of the image with zeros outside it, placed one block per device."""
    img = np.asarray(image)
    img = img.astype(np.result_type(img.dtype, np.float32))  # float32, or float64 kept
    h, w = img.shape[:2]
    (r, c), (rows, cols) = mesh.devices.shape, block_size(h, w, mesh)
    padded = np.zeros((r * rows + 2 * HALO, c * cols + 2 * HALO, img.shape[2]), img.dtype)
    padded[HALO:HALO + h, HALO:HALO + w] = img
    blocks = np.stack([np.stack([padded[i * rows:i * rows + rows + 2 * HALO,
                                        j * cols:j * cols + cols + 2 * HALO]
                                 for j in range(c)]) for i in range(r)])
    return jax.device_put(blocks, NamedSharding(mesh, PartitionSpec(*AXES)))


def _block_sums(params: P.GaussianParams, target: jax.Array, height: int, width: int,
                rows: int, cols: int, with_ssim: bool):
    """(sum |r - t|, sum (r - t)^2, sum of SSIM) over the block's own pixels inside the image
    (SSIM 0 when not `with_ssim`)."""
    top = jax.lax.axis_index(AXES[0]) * rows - HALO  # image row of the block's first row
    left = jax.lax.axis_index(AXES[1]) * cols - HALO  # image column of its first column
    hb, wb = rows + 2 * HALO, cols + 2 * HALO
    # the block's window of the image's render: the same pixel offsets, bit for bit
    rendered = render_xla(params, hb, wb, window=Window(height, width, top, left))
    image_row, image_col = top + jnp.arange(hb), left + jnp.arange(wb)
    inside = (((image_row >= 0) & (image_row < height))[:, None, None]
              & ((image_col >= 0) & (image_col < width))[None, :, None])
    rendered = jnp.where(inside, rendered, 0.0)
    t = target[0, 0]
    own = inside[HALO:HALO + rows, HALO:HALO + cols]
    diff = jnp.where(own, (rendered - t)[HALO:HALO + rows, HALO:HALO + cols], 0.0)
    ssim_sum = jnp.zeros((), rendered.dtype)
    if with_ssim:
        # the 'valid' maps are [rows, cols, 3]: the block's own pixels; hand-written backward
        ssim_sum = filters.weighted_ssim_to_target(
            rendered, t, jnp.broadcast_to(own, (rows, cols, 3)).astype(rendered.dtype), 0)
    return jnp.sum(jnp.abs(diff)), jnp.sum(diff * diff), ssim_sum


@functools.partial(jax.jit, static_argnames=("height", "width", "mesh", "loss"))
def sharded_loss(params: P.GaussianParams, target: jax.Array, height: int, width: int,
                 mesh: Mesh, lambda_l1: float = 0.9, loss: str = "smartsplat"):
    """(loss, mse) of `params` against the blocked `target` (`shard_target`) of an H x W
    image, computed block by block on `mesh`: loss "smartsplat" (`losses.smartsplat_loss` of
    the render, weight `lambda_l1`, which may be traced) or "l2" (the MSE). Differentiable
    with respect to `params` (replicated on every device); use has_aux for the mse."""
    if loss not in ("smartsplat", "l2"):
        raise ValueError(f"loss={loss!r} must be smartsplat or l2 for a sharded image")
    rows, cols = block_size(height, width, mesh)

    def per_block(p, t):
        sums = _block_sums(p, t, height, width, rows, cols, loss == "smartsplat")
        return tuple(jax.lax.psum(v, AXES) for v in sums)

    # check_vma=False: the rasterizer's loops start from constants that become per-block
    # values; shard_map then treats every value as varying, and the replicated parameters'
    # cotangents are summed over the blocks.
    l1, l2, ssim_sum = jax.shard_map(per_block, mesh=mesh,
                                     in_specs=(PartitionSpec(), PartitionSpec(*AXES)),
                                     out_specs=(PartitionSpec(),) * 3,
                                     check_vma=False)(params, target)
    count = height * width * 3
    mse = l2 / count
    if loss == "l2":
        return mse, mse
    return lambda_l1 * l1 / count + (1.0 - lambda_l1) * (1.0 - ssim_sum / count), mse
