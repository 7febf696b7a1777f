"""Degenerate Gaussians: finite renders and gradients for every finite parameter set.

The needle-thin Gaussian (one axis 1e-4 px or less, the other several pixels, its long axis
on a lattice direction through a pixel centre) made the conic form of sigma negative in
float32 and exp(-sigma) overflow, so the backward's 0 * inf gave NaN gradients. Scales are
now floored at `params.SCALE_FLOOR` and sigma is a sum of squares in every backend.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartsplat_jax import losses
from smartsplat_jax import params as P
from smartsplat_jax.render import render, render_pallas, render_reference, render_xla


def _needle(direction, thin, long=8.0, size=64):
    """One Gaussian centred on the pixel centre (32, 32) of a size x size image, scales
    (thin, long) px, its *long* axis along the lattice direction `direction` (dx, dy)."""
    dx, dy = direction
    theta = math.atan2(dy, dx) - math.pi / 2  # the second axis (long) is R e_y
    theta = theta % (2 * math.pi)
    mean = 2.0 * np.array([[32.0, 32.0]]) / size - 1.0
    return P.GaussianParams.create(
        means=mean, scales=[[thin, long]], colors=[[0.9, 0.2, 0.6]],
        rotation=P.angle_to_raw(jnp.array([[theta]], jnp.float32)))


@functools.lru_cache(maxsize=None)
def _l1_grad_fn(backend, size=64):
    """jit(value_and_grad) of the L1 loss against grey, compiled once per backend."""
    grey = jnp.full((size, size, 3), 0.5, jnp.float32)

    def loss(q):
        if backend == "pallas":
            img = render_pallas(q, size, size, interpret=True)
        elif backend == "reference":
            img = render_reference(q, size, size)
        else:
            img = render_xla(q, size, size)
        return jnp.mean(jnp.abs(img - grey))

    return jax.jit(jax.value_and_grad(loss))


def _l1_grads(p, backend):
    return _l1_grad_fn(backend)(p)


def _assert_finite_tree(tree, what):
    for name, leaf in zip(("means", "scales", "rotation", "colors", "opacity"),
                          jax.tree_util.tree_leaves(tree)):
        assert bool(jnp.all(jnp.isfinite(leaf))), f"{what}: {name} = {leaf}"


@pytest.mark.parametrize("backend", ["xla", "pallas", "reference"])
@pytest.mark.parametrize("direction", [(2, 1), (1, 1), (1, 2)])
@pytest.mark.parametrize("thin", [1e-4, 1e-6])
def test_needle_thin_gaussian_has_finite_gradients(backend, direction, thin):
    p = _needle(direction, thin)
    loss, g = _l1_grads(p, backend)
    assert math.isfinite(float(loss))
    _assert_finite_tree(g, f"{backend} {direction} {thin}")
    # Drawn at the floor, not dropped: exactly the pixels on the long axis are lit, with
    # alpha = exp(-k^2 |direction|^2 / (2 * 8^2)) at k steps from the centre.
    k = np.arange(-64, 65)
    alpha = np.exp(-0.5 * (k * np.hypot(*direction) / 8.0) ** 2)
    alpha = alpha[(alpha >= 1 / 255) & (np.abs(k * max(direction)) <= 31)]
    lit = np.abs(alpha[:, None] * np.array([0.9, 0.2, 0.6]) - 0.5).sum()
    expected = (0.5 * 3 * (64 * 64 - alpha.size) + lit) / (3 * 64 * 64)
    assert float(loss) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("direction", [(2, 1), (1, 1), (1, 2)])
def test_needle_gradients_agree_with_the_reference(direction):
    p = _needle(direction, 1e-5)
    _, g_ref = _l1_grads(p, "reference")
    for backend in ("xla", "pallas"):
        _, g = _l1_grads(p, backend)
        for name in ("means", "scales", "rotation", "colors"):
            a, b = getattr(g, name), getattr(g_ref, name)
            tol = 2e-3 * (1.0 + float(jnp.max(jnp.abs(b))))
            assert float(jnp.max(jnp.abs(a - b))) <= tol, (backend, name, a, b)


def test_scales_below_the_floor_render_as_the_floor():
    raw = P.GaussianParams.create(means=[[0.01, -0.02], [0.3, 0.2]],
                                  scales=[[0.0, 3.0], [-1e-7, 2.0]], colors=np.ones((2, 3)),
                                  rotation=[[0.3], [1.1]])
    floored = raw.replace(scales=jnp.array([[P.SCALE_FLOOR, 3.0], [P.SCALE_FLOOR, 2.0]]))
    for backend in ("xla", "reference"):
        np.testing.assert_array_equal(render(raw, 20, 24, backend=backend),
                                      render(floored, 20, 24, backend=backend))
    np.testing.assert_allclose(render(raw, 20, 24, backend="xla"),
                               render(raw, 20, 24, backend="reference"), atol=1e-5)
    assert float(P.scale_activation(jnp.float32(0.0))) == P.SCALE_FLOOR


_finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def _scenes(draw, n=6):
    """n Gaussians (static, so one compile) with scales from 1e-8 to 1e5 px of either sign,
    any angle, colours in the codec's box and beyond, opacities in [0, 2]."""
    f = lambda lo, hi, k: draw(st.lists(st.floats(lo, hi, **_finite), min_size=n * k,  # noqa
                                        max_size=n * k))
    log_s = np.array(f(-8.0, 5.0, 2)).reshape(n, 2)
    sign = np.where(np.array(f(-1.0, 1.0, 2)).reshape(n, 2) < 0, -1.0, 1.0)
    return P.GaussianParams.create(
        means=np.array(f(-3.0, 3.0, 2)).reshape(n, 2),
        scales=sign * 10.0 ** log_s,
        rotation=np.array(f(-30.0, 30.0, 1)).reshape(n, 1),
        colors=np.array(f(-16.0, 16.0, 3)).reshape(n, 3),
        opacity=np.array(f(0.0, 2.0, 1)).reshape(n, 1))


_H, _W = 13, 17


@functools.lru_cache(maxsize=None)
def _forward(backend):
    if backend == "pallas":
        return jax.jit(lambda q: render_pallas(q, _H, _W, interpret=True))
    return jax.jit(lambda q: render(q, _H, _W, backend=backend))


@functools.lru_cache(maxsize=None)
def _loss_grad_fn(backend):
    tgt = jnp.full((_H, _W, 3), 0.5, jnp.float32)
    draw = _forward(backend)
    return jax.jit(jax.value_and_grad(
        lambda q: losses.smartsplat_loss(draw(q), tgt, 0.9)))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_scenes())
def test_any_finite_parameters_give_finite_renders_and_gradients(p):
    for backend in ("xla", "reference"):
        val, g = _loss_grad_fn(backend)(p)
        assert math.isfinite(float(val)), backend
        _assert_finite_tree(g, backend)


@pytest.mark.slow  # interpreted Pallas on CPU, 10 scenes: ~15-20 s
@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_scenes())
def test_any_finite_parameters_are_finite_in_pallas(p):
    val, g = _loss_grad_fn("pallas")(p)
    assert math.isfinite(float(val))
    _assert_finite_tree(g, "pallas")
    chex.assert_trees_all_close(_forward("pallas")(p), _forward("xla")(p), atol=1e-5)
