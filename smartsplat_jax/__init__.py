"""smartsplat_jax: SmartSplat image compression with 2D Gaussians, in JAX.

Pipeline (see DESIGN in the README): load_image -> num_gaussians(CR) -> initialization ->
fit (differentiable rasterizer + optax) -> encode / decode -> render at any size.

The names below, and every submodule (`smartsplat_jax.codec`, ...), are imported on first
use (PEP 562): importing the package itself loads neither NumPy nor JAX, so the command line
(`smartsplat_jax.cli.run`) can set up its process before the heavy imports.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

# Exported name -> the submodule that defines it.
_EXPORTS = {"DEMO_IMAGE": "io", "ImageError": "io", "load_image": "io", "save_image": "io",
            "GaussianParams": "params", "num_gaussians": "params"}

__all__ = ["DEMO_IMAGE", "ImageError", "GaussianParams", "load_image", "save_image", "num_gaussians",
           "metrics", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # binds the package attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
