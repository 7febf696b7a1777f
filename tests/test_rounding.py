"""Compensated rounding of colours (codec.rounding), against a dense oracle: the render's
linear map W built column by column with the reference renderers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartsplat_jax import codec
from smartsplat_jax.codec.rate import BudgetQuantizer
from smartsplat_jax.codec.rounding import compensated_round, nearest_round, schedule
from smartsplat_jax.render.blend import render_blend_reference
from smartsplat_jax.render.reference import render_reference

from helpers import scene

H, W = 20, 24


def _set(blend: bool):
    p = scene(3, 40, H, W, extras=False)
    if blend:
        return p.replace(opacity=jnp.clip(p.opacity, 0.05, 0.95), blend=True)
    return p.replace(opacity=jnp.ones_like(p.opacity))


def _dense_w(p):
    """[H W, N] float64: the unclamped render of Gaussian i with colour 1 (channel 0),
    minus the render of zero colours (the blend's background)."""
    def raw(c):
        q = p.replace(colors=jnp.asarray(c, jnp.float32))
        img = (render_blend_reference(q, H, W, clamp=False) if p.blend
               else render_reference(q, H, W, clamp=False))
        return np.asarray(img[..., 0], np.float64).ravel()

    zero = raw(np.zeros((p.num, 3)))
    cols = []
    for i in range(p.num):
        c = np.zeros((p.num, 3))
        c[i, 0] = 1.0
        cols.append(raw(c) - zero)
    return np.stack(cols, 1)


def _error(wmat, colors, target):
    d = np.asarray(colors, np.float64) - np.asarray(target, np.float64)
    return float(np.mean(np.square(wmat @ d)))


@pytest.mark.parametrize("blend", [False, True])
def test_compensated_rounding_renders_closer_to_the_float_colours(blend):
    p = _set(blend)
    spec = codec.choose_spec(p, H, W, color_exp=-16)  # colour step 1/4: rounding matters
    g = codec.grid(spec)
    out, info = compensated_round(p, g, H, W)
    near = nearest_round(p, g, H, W)
    # On the grid: rounding again changes nothing; every other attribute is nearest's.
    again = nearest_round(out, g, H, W)
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(out)):
        np.testing.assert_array_equal(a, b)
    for name in ("means", "scales", "rotation", "opacity"):
        np.testing.assert_array_equal(getattr(out, name), getattr(near, name))
    assert not np.array_equal(out.colors, near.colors)
    # The oracle: ||W (c - c*)||^2 with W and c* of the other attributes on their grid.
    wmat = _dense_w(near)
    e_near = _error(wmat, near.colors, p.colors)
    e_comp = _error(wmat, out.colors, p.colors)
    assert e_comp < 0.8 * e_near
    np.testing.assert_allclose([info["mse_nearest"], info["mse_compensated"]],
                               [e_near, e_comp], rtol=2e-3)
    # Deterministic.
    out2, _ = compensated_round(p, g, H, W)
    np.testing.assert_array_equal(out.colors, out2.colors)


def test_schedule_lists_probes_stages_and_iterations():
    kinds, counts = schedule((0.1, 0.5), 3, 2, 40)
    assert kinds.tolist() == [0, 1, 2, 2, 3, 4, 4, 4, 3, 4, 4, 4, 5]
    assert counts.tolist() == [0, 0, 0, 0, 4, 0, 0, 0, 20, 0, 0, 0, 0]


def test_bad_settings_are_refused():
    p = _set(True)
    g = codec.grid(codec.choose_spec(p, H, W))
    for kw, match in [({"stages": (0.5, 0.2)}, "stages"), ({"stages": (0.0,)}, "stages"),
                      ({"iterations": 0}, "iterations"), ({"probes": 1.5}, "probes")]:
        with pytest.raises(ValueError, match=match):
            compensated_round(p, g, H, W, **kw)


def test_budget_quantizer_rounds_blended_sets_within_the_budget():
    p = _set(True)
    spec = codec.choose_spec(p, H, W, color_exp=-16)
    near = nearest_round(p, codec.grid(spec), H, W)
    out, info = BudgetQuantizer(H, W, None, backend="xla").round(p, spec)
    assert info["rounding"] == "compensated"
    assert info["rounding_mse_compensated"] < info["rounding_mse_nearest"]
    size = info["compensated_bytes"]
    assert size == len(codec.encode(out, H, W, spec=spec))
    # One byte short of what the compensated codes need: nearest codes, and it says why.
    out, info = BudgetQuantizer(H, W, size - 1, backend="xla").round(p, spec)
    assert "over the budget" in info["rounding"]
    np.testing.assert_array_equal(out.colors, near.colors)
    # Additive sets default to nearest rounding; compensate=True asks for it.
    add = _set(False)
    spec = codec.choose_spec(add, H, W, color_exp=-16)
    out, info = BudgetQuantizer(H, W, None, backend="xla").round(add, spec)
    assert info == {"rounding": "nearest"}
    out, info = BudgetQuantizer(H, W, None, backend="xla", compensate=True).round(add, spec)
    assert info["rounding"] == "compensated"
