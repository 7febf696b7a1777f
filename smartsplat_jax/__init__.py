"""smartsplat_jax: SmartSplat image compression with 2D Gaussians, in JAX.

Pipeline (see DESIGN in the README): load_image -> num_gaussians(CR) -> initialization ->
fit (differentiable rasterizer + optax) -> encode / decode -> render at any size.
"""

from smartsplat_jax.io import DEMO_IMAGE, ImageError, load_image, save_image
from smartsplat_jax.params import GaussianParams, num_gaussians
from smartsplat_jax import metrics

__version__ = "0.1.0"

__all__ = ["DEMO_IMAGE", "ImageError", "GaussianParams", "load_image", "save_image", "num_gaussians",
           "metrics", "__version__"]
