"""JAX's persistent compilation cache for the `smartsplat` command and `experiments.fit`.

A fresh process compiles the renderer (and, to train, the training step) before its first
use: about a second on a 2-core CPU for a decode, more for training, every time. With the
cache, a later run of the same program shapes loads the compiled code instead (measured for
a 2048 x 1365 decode on a 2-core CPU: the render's compile, 1.3 s, becomes a 0.3 s trace and
load). Entries are keyed by the program, the jax/jaxlib versions and the device, so a stale
entry is never used.

Where: `$SMARTSPLAT_CACHE_DIR` if set, else `$XDG_CACHE_HOME/smartsplat_jax/jax`, else
`~/.cache/smartsplat_jax/jax`. Opt out with `SMARTSPLAT_CACHE_DIR=off` (or `0`, `none`, an
empty value). A cache directory the user gave JAX itself (`JAX_COMPILATION_CACHE_DIR` or
`jax.config`) is left in charge. The library's functions never turn the cache on by
themselves: a Python caller decides (`enable()`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "MAX_BYTES", "cache_dir", "enable"]

ENV_VAR = "SMARTSPLAT_CACHE_DIR"
# Bounded: JAX evicts the least recently used entries beyond this size.
MAX_BYTES = 2 * 1024**3
_OFF = {"", "0", "off", "none", "false", "no"}


def cache_dir() -> Path | None:
    """The cache folder the environment asks for, or None when the cache is switched off."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smartsplat_jax" / "jax"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on, in `path` or `cache_dir()`.

    Every compiled program is cached (no minimum compile time: the decode path is many
    small programs plus the renderer). A folder that cannot be created or written leaves
    the cache off (it only saves time). Returns the folder in use, or None.
    """
    import jax

    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    folder = Path(path) if path is not None else cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
