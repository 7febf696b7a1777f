"""Shared fixtures. Tests marked `slow` are skipped unless --runslow or SMARTSPLAT_RUN_SLOW=1."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# The CLI and experiments.fit turn on JAX's persistent compilation cache; tests that call
# them in-process or in subprocesses must not write into the user's ~/.cache (the tests of
# the cache set their own folder).
os.environ.setdefault("SMARTSPLAT_CACHE_DIR", "off")


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
