"""The paper's configuration (SPEC §6): 50,000 steps; meant for a GPU.

  python -m experiments.fit --config=experiments/configs/paper.py --image=photo.png --cr=50
"""

from experiments.configs import default


def get_config():
    c = default.get_config()
    c.steps = 50_000
    c.gaussians = "paper"  # N = floor(3 H W / (7 CR)), as the paper
    c.relocate_every = 0  # no relocation of invisible Gaussians: the paper's training
    c.lr_means = 1e-4  # the paper's position rate in normalized units, whatever the size
    c.lr_scales = 5e-2  # the paper's scales' rate (px per step)
    c.eval_every = 5000
    c.checkpoint_every = 5000
    c.chunk_steps = 500
    return c
