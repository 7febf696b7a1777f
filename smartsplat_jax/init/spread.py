"""The initialization's batched work spread over several devices (`smart_init(devices=...)`).

The initialization runs in batches whose rows are independent of each other: tiles of the
variational sampling (each with its own key), Gaussians of the weighted-median colours and
queries of the nearest-neighbour scales. Given several devices, each batch is laid out with
its leading axis split evenly over them (`put_batch`) and what every row reads -- the image,
the point set and its grid -- replicated on each (`replicate`); the jitted batch functions
are the same, so jax partitions them row-wise and every row gets the one-device arithmetic.
The variational samples (positions) come out bit-equal; the partitioned programs are
compiled anew and may round a sum differently, so scales and colours agree to float
rounding (on 4 simulated CPU devices: 11 of 1,500 neighbour scales one ulp apart). Batch
lengths are rounded up to a multiple of the device count (`round_up`); the callers pad as
they already do. The exclusion sampling of the uniform points, whose rounds each depend on
all points accepted before, runs on the first device.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["check_devices", "count", "round_up", "put_batch", "replicate"]


def check_devices(devices) -> tuple | None:
    """A tuple of distinct jax devices, or None (one device: no spreading).

    Raises:
      ValueError: `devices` is not a sequence of distinct `jax.Device`s.
    """
    if devices is None:
        return None
    try:
        devs = tuple(devices)
    except TypeError:
        raise ValueError(f"devices={devices!r} must be a sequence of jax devices "
                         "(e.g. jax.devices()[:4]) or None") from None
    if not devs or not all(isinstance(d, jax.Device) for d in devs):
        raise ValueError(f"devices={devices!r} must be a non-empty sequence of jax devices "
                         "(e.g. jax.devices()[:4]) or None")
    if len(set(devs)) != len(devs):
        raise ValueError(f"devices={devices!r} names a device twice")
    return devs if len(devs) > 1 else None


def count(devices) -> int:
    """How many devices share a batch (1 for None)."""
    return 1 if devices is None else len(devices)


def round_up(n: int, devices) -> int:
    """n rounded up to a multiple of the device count (at least one row per device)."""
    d = count(devices)
    return max(d, -(-n // d) * d)


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices, dtype=object), ("batch",))


def put_batch(x, devices):
    """`x` (an array or a pytree of arrays) with its leading axis split evenly over
    `devices` (its length a multiple of their count); on one device, as jax arrays."""
    if devices is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, x)
    return jax.device_put(x, NamedSharding(_mesh(devices), PartitionSpec("batch")))


def replicate(x, devices):
    """`x` (an array or a pytree of arrays) with a copy on each of `devices`; on one device,
    as jax arrays."""
    if devices is None:
        return jax.tree_util.tree_map(jax.numpy.asarray, x)
    return jax.device_put(x, NamedSharding(_mesh(devices), PartitionSpec()))
