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


@pytest.mark.parametrize("blend", [False, True])
def test_budget_quantizer_rounds_within_the_budget(blend):
    p = _set(blend)
    spec = codec.choose_spec(p, H, W, color_exp=-16)
    near = nearest_round(p, codec.grid(spec), H, W)
    out, used, info = BudgetQuantizer(H, W, None, backend="xla").round(p, spec)
    assert info["rounding"] == "compensated" and used == spec
    assert info["rounding_trials"][0]["mse"] < info["rounding_mse_nearest"]
    size = info["rounding_trials"][0]["bytes"]
    assert size == info["final_bytes"] == len(codec.encode(out, H, W, spec=spec))
    # One byte short of what the compensated codes need: a coarser colour step, whose
    # compensated codes fit and still render closer than the nearest codes of `spec`.
    out, used, info = BudgetQuantizer(H, W, size - 1, backend="xla").round(p, spec)
    trials = info["rounding_trials"]
    assert trials[0]["bytes"] == size and len(trials) >= 2
    assert info["rounding"].startswith("compensated (colour step")
    assert used.color_exp == trials[-1]["color_exp"] > spec.color_exp
    for f in ("pos_exp", "scale_exp", "angle_exp", "opacity_exp"):
        assert getattr(used, f) == getattr(spec, f)
    data = codec.encode(out, H, W, spec=used)
    assert len(data) == info["final_bytes"] == trials[-1]["bytes"] <= size - 1
    assert trials[-1]["mse"] <= info["rounding_mse_nearest"]
    decoded, _, _ = codec.decode(data)  # the file holds exactly these colours
    np.testing.assert_allclose(np.asarray(decoded.colors)[_canonical_order(decoded)],
                               np.asarray(out.colors)[_canonical_order(out)], atol=1e-6)
    wmat = _dense_w(p)
    assert _error(wmat, out.colors, p.colors) < _error(wmat, near.colors, p.colors)
    # No coarser step allowed: the nearest codes of `spec`, and it says why.
    out, used, info = BudgetQuantizer(H, W, size - 1, backend="xla",
                                      compensate_coarser=0).round(p, spec)
    assert "over the budget" in info["rounding"] and used == spec
    np.testing.assert_array_equal(out.colors, near.colors)
    # compensate=False keeps the nearest codes.
    out, used, info = BudgetQuantizer(H, W, None, backend="xla", compensate=False).round(p, spec)
    assert info == {"rounding": "nearest"} and used == spec
    np.testing.assert_array_equal(out.colors, near.colors)


def _canonical_order(p):
    """Row indices in an order independent of how the rows were stored: by position, then
    colour."""
    m = np.asarray(p.means, np.float64)
    return np.lexsort((np.asarray(p.colors)[:, 0], m[:, 1], m[:, 0]))


def test_budget_quantizer_refuses_bad_settings():
    for kw in ({"compensate_coarser": -1}, {"compensate_coarser": 9},
               {"compensate_coarser": True}, {"compensate": None}, {"compensate": "yes"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            BudgetQuantizer(H, W, 100, **kw)


def test_finish_picks_the_opacity_step_whose_file_renders_closest():
    """A blended set's opacity step is chosen with its colours: every step of opacity_exps
    gets the finest colour step that fits; the winner's nearest codes render closest to the
    float render (checked with the dense reference renderer), within the budget."""
    from smartsplat_jax.codec.rate import color_for_budget

    p = _set(True)
    spec = codec.choose_spec(p, H, W, pos_exp=-8, scale_exp=-24, color_exp=-32)
    on_grid = nearest_round(p, codec.grid(spec), H, W)  # the geometry, as after the phase
    p = p.replace(means=on_grid.means, scales=on_grid.scales, rotation=on_grid.rotation)
    fixed, fixed_size = color_for_budget(p, H, W, 10 ** 6, spec)  # no limit: the finest
    budget = int(0.8 * fixed_size)
    exps = (-64, -56, -48, -40)
    q = BudgetQuantizer(H, W, budget, backend="xla", opacity_exps=exps)
    final, info = q.finish(p, spec)
    trials = info["opacity_trials"]
    assert [t["opacity_exp"] for t in trials] == list(exps)
    reference = np.asarray(render_blend_reference(p, H, W), np.float64)

    def mse(s):
        r = render_blend_reference(nearest_round(p, codec.grid(s), H, W), H, W)
        return float(np.mean(np.square(np.asarray(r, np.float64) - reference)))

    for t in trials:
        s = codec.choose_spec(p, H, W, pos_exp=spec.pos_exp, scale_exp=spec.scale_exp,
                              color_exp=t["color_exp"], opacity_exp=t["opacity_exp"])
        assert t["bytes"] == len(codec.encode(p, H, W, spec=s)) <= budget
        assert t["mse"] == pytest.approx(mse(s), rel=1e-3, abs=1e-9)
        # The finest colour step that fits: one step finer does not.
        finer = codec.choose_spec(p, H, W, pos_exp=spec.pos_exp, scale_exp=spec.scale_exp,
                                  color_exp=t["color_exp"] - 1, opacity_exp=t["opacity_exp"])
        assert len(codec.encode(p, H, W, spec=finer)) > budget
    best = min(trials, key=lambda t: t["mse"])
    assert (final.opacity_exp, final.color_exp) == (best["opacity_exp"], best["color_exp"])
    assert info["final_bytes"] == len(codec.encode(p, H, W, spec=final)) <= budget
    # One step fixes it (whatever the plan's); sets without opacities never search.
    for i in (0, 2):
        e = exps[i]
        one, info1 = BudgetQuantizer(H, W, budget, backend="xla", opacity_exps=(e,)).finish(
            p, spec)
        assert info1["opacity_trials"] == [trials[i]]
        assert (one.opacity_exp, one.color_exp) == (e, trials[i]["color_exp"])
    add = _set(False)
    _, info2 = BudgetQuantizer(H, W, budget, backend="xla").finish(add, codec.choose_spec(add, H, W))
    assert "opacity_trials" not in info2
    for bad in ((), (-97,), (1,), (True,), "-64"):
        with pytest.raises(ValueError, match="opacity_exps"):
            BudgetQuantizer(H, W, budget, opacity_exps=bad)
