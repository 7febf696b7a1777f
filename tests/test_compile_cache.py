"""smartsplat_jax.compile_cache: where the CLI's persistent compilation cache lives, and
that a decode fills it (and leaves nothing when it is switched off)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smartsplat_jax import codec, compile_cache
from smartsplat_jax import params as P

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["off", "OFF", "0", "none", "", "  "])
def test_switched_off(monkeypatch, value):
    monkeypatch.setenv(compile_cache.ENV_VAR, value)
    assert compile_cache.cache_dir() is None


def test_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(compile_cache.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "smartsplat_jax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.cache_dir() == tmp_path / "home" / ".cache" / "smartsplat_jax" / "jax"


def test_a_decode_fills_the_cache_and_off_writes_nothing(tmp_path):
    p = P.GaussianParams.create(means=[[0.0, 0.0], [0.5, -0.3]], scales=[[3.0, 2.0], [1.5, 4.0]],
                                colors=[[0.8, 0.2, 0.1], [0.1, 0.5, 0.9]])
    src = tmp_path / "two.ssplat"
    src.write_bytes(codec.encode(p, 24, 32))

    home = tmp_path / "home"  # where the default folder would go

    def decode(cache, out):
        env = {**os.environ, compile_cache.ENV_VAR: cache, "JAX_PLATFORMS": "cpu",
               "HOME": str(home)}
        for name in ("XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR",
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
            env.pop(name, None)  # the test session's own cache (tests/conftest.py) stays out
        r = subprocess.run([sys.executable, "-m", "smartsplat_jax", "decompress", str(src),
                            str(tmp_path / out)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return np.asarray(Image.open(tmp_path / out))

    cache = tmp_path / "cache"
    first = decode(str(cache), "a.png")
    entries = sorted(f.name for f in cache.iterdir())
    assert any("render" in name for name in entries), entries
    second = decode(str(cache), "b.png")  # served from the cache: the same image
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(decode("off", "c.png"), first)
    assert not (home / ".cache").exists()
