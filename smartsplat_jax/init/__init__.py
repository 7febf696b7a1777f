"""SmartSplat's feature-smart initialization (SPEC §4); each stage is its own module:

  tiles        adaptive tile layout and the per-tile allocation (Eq. 1-7, 13)
  features     gradient magnitude, colour variance, sampling weights (Eq. 8-10)
  variational  weighted sampling without replacement, scales (Eq. 11-17)
  grid         spatial grid for neighbour queries
  uniform      exclusion-based uniform sampling
  knn          K-nearest-neighbour scales
  colors       Gaussian-weighted median colours
  smart        smart_init (the whole pipeline) and random_init (the ablation baseline)
"""

from smartsplat_jax.init.smart import LAMBDA_G, random_init, smart_init

__all__ = ["LAMBDA_G", "smart_init", "random_init"]
