"""Shared fixtures. Tests marked `slow` are skipped unless --runslow or SMARTSPLAT_RUN_SLOW=1."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# One persistent compilation cache for the whole test session, in a temporary folder removed
# at exit. Most of the suite's time is XLA compiling the same programs again: in another
# test's jit wrapper, or in a subprocess (the CLI, the launchers, the notebooks' kernels, the
# simulated-device checks, pytest-xdist's workers), which inherits these variables. A cached
# program is the same executable, so no result changes, and nothing is written into the
# user's ~/.cache. A cache the caller chose (SMARTSPLAT_CACHE_DIR, a folder or `off`, or
# JAX_COMPILATION_CACHE_DIR) is left as it is; the tests of the cache itself set their own
# folders.
if "SMARTSPLAT_CACHE_DIR" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="smartsplat-tests-jax-cache-")
    atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
    os.environ["SMARTSPLAT_CACHE_DIR"] = _SESSION_CACHE
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    # Programs that took >= 0.25 s to compile are written (every program, ~1,700 small ones,
    # made the in-process tests slower; >= 1 s leaves out many that subprocesses compile again).
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.25"


def pytest_configure(config):
    from smartsplat_jax import compile_cache

    # In-process too (JAX may have read its environment before this file ran); a no-op when
    # SMARTSPLAT_CACHE_DIR is `off`.
    if compile_cache.enable() is not None:
        import jax

        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("SMARTSPLAT_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or SMARTSPLAT_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    d = DATA / "kodak"
    if not d.is_dir():
        pytest.skip(f"test images not found: {d} (the shared data folder beside the project)")
    return d


@pytest.fixture(scope="session")
def hires_dir() -> Path:
    d = DATA / "hires"
    if not d.is_dir():
        pytest.skip(f"test images not found: {d} (the shared data folder beside the project)")
    return d
