"""Training: the loss (SPEC §5), the optimizer (SPEC §6), the loop, checkpoints, methods.

  params, info = initialize("smartsplat", key, image, N)
  params, history = fit(image, params, config_for_method("smartsplat", steps=2000))
  params, history = fit(image, params, config, quantizer=spec)   # last phase quantization-aware

The names below load their module on first use (PEP 562), so that importing
`smartsplat_jax.train.config` (the CLI's --method choices) does not import optax and the loop.
"""

import importlib

_EXPORTS = {
    "METHODS": "config", "FitConfig": "config", "config_for_method": "config",
    "default_qat_steps": "config", "default_qat_stages": "config",
    "default_relocate_every": "config", "RELOCATABLE_METHODS": "config",
    "default_lr_means": "config", "user_training": "config", "MEANS_PX_PER_STEP": "config",
    "default_lr_scales": "config", "SCALES_PX_PER_STEP": "config",
    "TrainingDiverged": "loop", "TrainingInterrupted": "loop", "QatSchedule": "loop",
    "fit": "loop", "loss_value": "loop", "qat_schedule": "loop", "snap": "loop",
    "initialize": "methods", "train_method": "methods", "make_optimizer": "optim",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'smartsplat_jax.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"smartsplat_jax.train.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
