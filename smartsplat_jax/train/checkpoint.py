"""Checkpoints: the training state as one .npz file per step, written atomically.

A checkpoint holds the step, the parameters, the optimizer state (as the flat list of its
leaves; restoring needs a template of the same structure, which the loop builds from the
same config) and a JSON record (history, the run's fingerprint, the backend). Files are
`ckpt_{step:09d}.npz`; the two newest are kept. Training draws no random numbers, so the
parameters, the optimizer state and the step are the whole state: a resumed run repeats the
uninterrupted one's arithmetic.

Why not orbax-checkpoint: the state is a few arrays on one host, written every few hundred
steps; one atomically renamed .npz is readable with numpy alone, has no background threads
that a SIGKILL could leave half-done, and adds no dependency (orbax brings tensorstore and an
API that changes between releases). A sharded multi-host state would change this.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import jax
import numpy as np

from smartsplat_jax.io import atomic_write_bytes

__all__ = ["save_checkpoint", "latest_checkpoint", "list_checkpoints", "load_checkpoint",
           "load_latest", "clear_checkpoints", "read_record"]

_KEEP = 2
log = logging.getLogger("smartsplat_jax.train")


def save_checkpoint(directory: str | Path, step: int, state, record: dict) -> Path:
    """Writes `state` (any pytree of arrays) and a JSON-serializable `record` for `step`;
    keeps the two newest checkpoints of `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["record"] = np.frombuffer(json.dumps({"step": step, **record}).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = d / f"ckpt_{step:09d}.npz"
    atomic_write_bytes(path, buf.getvalue(), overwrite=True)
    for old in list_checkpoints(d)[_KEEP:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoint files of `directory`, newest (highest step) first."""
    d = Path(directory)
    return sorted(d.glob("ckpt_*.npz"), reverse=True) if d.is_dir() else []


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint file in `directory`, or None."""
    files = list_checkpoints(directory)
    return files[0] if files else None


def clear_checkpoints(directory: str | Path) -> int:
    """Deletes the checkpoint files of `directory`; returns how many there were."""
    files = list_checkpoints(directory)
    for f in files:
        f.unlink(missing_ok=True)
    return len(files)


_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile,
               json.JSONDecodeError, UnicodeDecodeError)


def read_record(path: str | Path) -> dict:
    """The JSON record of a checkpoint (without loading its arrays).

    Raises:
      ValueError: the file is not a readable checkpoint (truncated, corrupt)."""
    try:
        with np.load(path) as data:
            return json.loads(bytes(data["record"]).decode())
    except _UNREADABLE as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path, template):
    """(state, record) from a checkpoint; `state` takes the structure of `template`.

    Raises:
      ValueError: the file is unreadable (truncated, corrupt) or does not match the
        template (another config or N).
    """
    try:
        with np.load(path) as data:
            record = json.loads(bytes(data["record"]).decode())
            leaves_t, treedef = jax.tree_util.tree_flatten(template)
            names = sorted(k for k in data.files if k.startswith("leaf_"))
            if len(names) != len(leaves_t):
                raise ValueError(f"{path}: checkpoint has {len(names)} arrays, the training "
                                 f"state {len(leaves_t)}: it was written with another method "
                                 "or config")
            leaves = []
            for name, t in zip(names, leaves_t):
                a = data[name]
                if a.shape != np.shape(t):
                    raise ValueError(f"{path}: array {name} has shape {a.shape}, expected "
                                     f"{np.shape(t)} (another image size, CR or method?)")
                leaves.append(jax.numpy.asarray(a, dtype=np.asarray(t).dtype))
    except ValueError:
        raise
    except _UNREADABLE as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    return jax.tree_util.tree_unflatten(treedef, leaves), record


def load_latest(directory: str | Path, template, accept=None):
    """The newest checkpoint of `directory` that loads, falling back to older ones.

    Args:
      directory: the checkpoint folder.
      template: the state's structure (see `load_checkpoint`).
      accept: optional `record -> None` that raises (e.g. ValueError for another run's
        checkpoint) before any array is loaded; its errors are not skipped.

    Returns:
      (state, record, path, skipped) with skipped a list of "path: reason" for the newer
      files that could not be read, or None when no checkpoint loads.
    """
    skipped = []
    for path in list_checkpoints(directory):
        try:
            record = read_record(path)
        except ValueError as e:
            skipped.append(str(e))
            log.warning("skipping %s", e)
            continue
        if accept is not None:
            accept(record)
        try:
            state, record = load_checkpoint(path, template)
        except ValueError as e:
            skipped.append(str(e))
            log.warning("skipping %s", e)
            continue
        return state, record, path, skipped
    return None
