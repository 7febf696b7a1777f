"""Small helpers shared by the tests."""

import jax


def enable_x64():
    """Context manager turning on float64 (jax.enable_x64 on new jax, experimental on old)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as _enable  # jax < 0.8

    return _enable(True)
