"""Small helpers shared by the benchmark launchers."""

from __future__ import annotations

import json
import os

from smartsplat_jax.io import atomic_write_bytes


def write_json(path: str, rows) -> None:
    """Writes `rows` as indented JSON to `path` (folders created, atomic); no-op if path is ''."""
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_bytes(path, json.dumps(rows, indent=2).encode())
    print(f"\nwrote {path}")
