"""`python -m smartsplat_jax`: the `smartsplat` command line (see smartsplat_jax.cli)."""

from smartsplat_jax.cli import run

run()
