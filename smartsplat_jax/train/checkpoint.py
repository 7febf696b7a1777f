"""Checkpoints: the training state as one .npz file, written atomically.

A checkpoint holds the step, the parameters, the optimizer state (as the flat list of its
leaves; restoring needs a template of the same structure, which the loop builds from the
same config) and a JSON record (history, config). Files are `ckpt_{step:09d}.npz`; the two
newest are kept.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax
import numpy as np

from smartsplat_jax.io import atomic_write_bytes

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint"]

_KEEP = 2


def save_checkpoint(directory: str | Path, step: int, state, record: dict) -> Path:
    """Writes `state` (any pytree of arrays) and a JSON-serializable `record` for `step`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["record"] = np.frombuffer(json.dumps({"step": step, **record}).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = d / f"ckpt_{step:09d}.npz"
    atomic_write_bytes(path, buf.getvalue())
    for old in sorted(d.glob("ckpt_*.npz"))[:-_KEEP]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint file in `directory`, or None."""
    d = Path(directory)
    files = sorted(d.glob("ckpt_*.npz")) if d.is_dir() else []
    return files[-1] if files else None


def load_checkpoint(path: str | Path, template):
    """(state, record) from a checkpoint; `state` takes the structure of `template`.

    Raises:
      ValueError: the file does not match the template (another config or N).
    """
    with np.load(path) as data:
        record = json.loads(bytes(data["record"]).decode())
        leaves_t, treedef = jax.tree_util.tree_flatten(template)
        names = sorted(k for k in data.files if k.startswith("leaf_"))
        if len(names) != len(leaves_t):
            raise ValueError(f"{path}: checkpoint has {len(names)} arrays, the training state "
                             f"{len(leaves_t)}: it was written with another method or config")
        leaves = []
        for name, t in zip(names, leaves_t):
            a = data[name]
            if a.shape != np.shape(t):
                raise ValueError(f"{path}: array {name} has shape {a.shape}, expected "
                                 f"{np.shape(t)} (another image size, CR or method?)")
            leaves.append(jax.numpy.asarray(a, dtype=np.asarray(t).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves), record
