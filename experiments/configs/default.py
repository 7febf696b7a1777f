"""Default configuration of `python -m experiments.fit`: a quick CPU run on the demo image.

Override any field on the command line: --config.steps=5000 --config.lambda_l1=0.8
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.image = ""  # empty: the bundled demo image (Kodak kodim23, 768x512)
    c.cr = 20.0
    c.method = "smartsplat"  # smartsplat | random | gaussianimage-rs
    c.gaussians = "paper"  # paper | N: how many Gaussians the byte budget buys
    c.steps = 1000  # CPU-friendly; the paper trains 50,000 (configs/paper.py)
    c.backend = "auto"
    c.seed = 0
    c.workdir = "results/fit"
    # Training (FitConfig fields; None keeps the method's default, see SPEC §6 and §10).
    # What training minimises: "smartsplat" (L1 and 1 - SSIM, SPEC §5) or "l2" (the MSE,
    # which PSNR measures; README "The loss"). None: the method's own.
    c.loss = ml_collections.FieldReference(None, field_type=str)
    c.lambda_l1 = ml_collections.FieldReference(None, field_type=float)
    # The positions' rate (normalized units per step). None: for smartsplat, 0.3 px per step
    # along the longer side and at least the paper's 1e-4 (train.config.default_lr_means).
    c.lr_means = ml_collections.FieldReference(None, field_type=float)
    # The scales' rate (px per step). None: for smartsplat 0.1, twice the paper's
    # (train.config.default_lr_scales).
    c.lr_scales = ml_collections.FieldReference(None, field_type=float)
    c.lr_colors = ml_collections.FieldReference(None, field_type=float)
    c.lr_rotation = ml_collections.FieldReference(None, field_type=float)
    # The quantization-aware phase's snapping stages per group (None: 1 to 4 by its length).
    c.qat_stages = ml_collections.FieldReference(None, field_type=int)
    # Move the Gaussians training made invisible to where the error is, every this many steps
    # (train.relocate; 0: never, the paper's method). None: for smartsplat, 500, or steps // 4
    # in runs under 2,000 steps, none under 400 (train.config.default_relocate_every).
    c.relocate_every = ml_collections.FieldReference(None, field_type=int)
    c.chunk_steps = 100
    c.eval_every = 250
    c.checkpoint_every = 500
    # A chunk whose loss or parameters turn NaN/Inf is rolled back and retried at 1/4 of the
    # learning rates up to this many times in a row before the run stops (writing its best
    # parameters).
    c.max_retries = 3
    return c
