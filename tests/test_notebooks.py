"""The notebooks in notebooks/ run top to bottom (on CPU, tiny) and install the real project.

Each notebook is executed with nbclient (the Jupyter project's own executor, which nbconvert,
papermill and nbmake build on): a cell setting small sizes is inserted after the cell tagged
`parameters`, as papermill would, so the notebook's own form defaults stay what a Colab user
sees. Any cell error fails the test.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# What CI runs: tiny images and few steps (the notebooks' defaults are for a GPU runtime).
SMALL = {
    "quickstart.ipynb": 'SIDE = 64\nSTEPS = 40\nRD_CRS = "10"\nUPLOAD = False',
    "research.ipynb": "SIDE = 48\nSTEPS = 30",
}


def _pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / name).read_text())["cells"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_first_cell_installs_the_project_itself(name):
    project = _pyproject()["project"]
    first = _cells(name)[0]
    assert first["cell_type"] == "code"
    src = _source(first)
    # Installs this project by its name (from the repository URL) or the checkout in editable
    # mode, with extras that pyproject.toml defines ...
    assert f'f"{project["name"]}{{_extras}} @ git+{{REPO_URL}}"' in src
    assert '["-e", f"{_root}{_extras}"]' in src
    extras = set(project["optional-dependencies"])
    named = set(re.findall(r"[\[,]([a-z0-9_-]+)(?=[,\]])", " ".join(
        re.findall(r'_extras = "(\[[^"]*\])"', src))))
    assert named and named <= extras, (named, extras)
    # ... and never a hand-written copy of its dependencies.
    deps = [re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        deps += [re.split(r"[<>=\[ ;]", d)[0].lower() for d in extra]
    quoted = {s.lower() for s in re.findall(r'"([A-Za-z0-9_.-]+)"', src)}
    assert not quoted & (set(deps) - {project["name"]}), quoted & set(deps)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs_top_to_bottom(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(at) == 1, "one cell tagged 'parameters'"
    small = nbformat.v4.new_code_cell(SMALL[name])
    small.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at[0] + 1, small)
    env_before = os.environ.get("JAX_PLATFORMS")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the kernel inherits it
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("JAX_PLATFORMS", None)
    pictures = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if "image/png" in o.get("data", {}))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    if name == "quickstart.ipynb":
        # init, compare, error map, ellipses, curves, rate-distortion, the 2x decode
        assert pictures >= 7, pictures
        files = list((tmp_path / "smartsplat_out").glob("*.ssplat"))
        assert len(files) == 1
        from smartsplat_jax.codec import read_info
        info = read_info(files[0].read_bytes())
        assert files[0].stat().st_size <= 3 * info.height * info.width / 20
        assert (tmp_path / "smartsplat_out" / files[0].name.replace("_cr20.ssplat", "_x2.png")).is_file()
    else:
        assert pictures >= 3, pictures  # ellipses of the grid init, two method plots
