"""Training: the loss (SPEC §5), the optimizer (SPEC §6), the loop, checkpoints, methods.

  params, info = initialize("smartsplat", key, image, N)
  params, history = fit(image, params, config_for_method("smartsplat", steps=2000))
"""

from smartsplat_jax.train.config import METHODS, FitConfig, config_for_method
from smartsplat_jax.train.finetune import quantization_finetune
from smartsplat_jax.train.loop import TrainingDiverged, effective_params, fit, loss_value
from smartsplat_jax.train.methods import initialize
from smartsplat_jax.train.optim import make_optimizer

__all__ = ["METHODS", "FitConfig", "config_for_method", "TrainingDiverged", "effective_params", "fit",
           "loss_value", "initialize", "make_optimizer", "quantization_finetune"]
