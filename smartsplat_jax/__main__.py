"""`python -m smartsplat_jax`: the `smartsplat` command line (see smartsplat_jax.cli)."""

import sys

from smartsplat_jax.cli import main

sys.exit(main())
