"""Training: the loss (SPEC §5), the optimizer (SPEC §6), the loop, checkpoints, methods.

  params, info = initialize("smartsplat", key, image, N)
  params, history = fit(image, params, config_for_method("smartsplat", steps=2000))
  params, history = fit(image, params, config, quantizer=spec)   # last phase quantization-aware
"""

from smartsplat_jax.train.config import METHODS, FitConfig, config_for_method, default_qat_steps
from smartsplat_jax.train.loop import (QatSchedule, TrainingDiverged, TrainingInterrupted, fit,
                                       loss_value, qat_schedule, snap)
from smartsplat_jax.train.methods import initialize
from smartsplat_jax.train.optim import make_optimizer

__all__ = ["METHODS", "FitConfig", "config_for_method", "default_qat_steps", "TrainingDiverged",
           "TrainingInterrupted", "QatSchedule", "fit", "loss_value", "qat_schedule", "snap",
           "initialize", "make_optimizer"]
