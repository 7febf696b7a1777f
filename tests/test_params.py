"""smartsplat_jax.params: pytree, activations, coordinates, CR budget."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smartsplat_jax import params as P


def _toy(n=4):
    return P.GaussianParams.create(
        means=np.zeros((n, 2)), scales=np.ones((n, 2)), colors=np.full((n, 3), 0.5))


def test_pytree_field_order_and_defaults():
    g = _toy(4)
    leaves = jax.tree_util.tree_leaves(g)
    assert [l.shape for l in leaves] == [(4, 2), (4, 2), (4, 1), (4, 3), (4, 1)]
    chex.assert_trees_all_equal(g.rotation, jnp.zeros((4, 1)))
    chex.assert_trees_all_equal(g.opacity, jnp.ones((4, 1)))
    assert g.num == 4
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, g)
    assert isinstance(doubled, P.GaussianParams)
    kw = P.GaussianParams(means=g.means, scales=g.scales, rotation=g.rotation,
                          colors=g.colors, opacity=g.opacity)
    chex.assert_trees_all_equal(kw, g)
    assert g.validate() is g


def test_validate_names_bad_field():
    g = _toy(3).replace(colors=jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"colors has shape \(3, 4\); expected \(3, 3\)"):
        g.validate()


def test_activations():
    np.testing.assert_allclose(P.rotation_angle(jnp.zeros((1, 1))), [[math.pi]], rtol=1e-7)
    theta = jnp.linspace(0.1, 6.1, 7)
    np.testing.assert_allclose(P.rotation_angle(P.angle_to_raw(theta)), theta, rtol=1e-5)
    np.testing.assert_array_equal(P.scale_activation(jnp.array([[-2.0, 3.0]])), [[2.0, 3.0]])


def test_covariance_hand_computed():
    # theta = pi/2 (raw = logit(1/4)) swaps the axes: Sigma = diag(sy^2, sx^2).
    g = P.GaussianParams.create(means=[[0, 0]], scales=[[2.0, -0.5]], colors=[[1, 1, 1]],
                                rotation=[[math.log(0.25 / 0.75)]])
    np.testing.assert_allclose(P.covariance(g)[0], [[0.25, 0], [0, 4.0]], atol=1e-6)
    # theta = pi/4: Sigma = R diag(a^2, b^2) R^T with cos = sin = 1/sqrt 2.
    g = g.replace(scales=jnp.array([[2.0, 1.0]]), rotation=P.angle_to_raw(jnp.array([[math.pi / 4]])))
    np.testing.assert_allclose(P.covariance(g)[0], [[2.5, 1.5], [1.5, 2.5]], atol=1e-5)


def test_coordinates():
    xy = jnp.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    px = P.normalized_to_pixel(xy, height=10, width=20)
    np.testing.assert_allclose(px, [[0, 0], [20, 10], [10, 5]])
    np.testing.assert_allclose(P.pixel_to_normalized(px, 10, 20), xy, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coordinates_of_numpy_arrays_stay_numpy_with_the_same_rounding(dtype):
    """The decoder shifts band frames on the host: numpy in, numpy out, in the input's
    dtype, equal to jax's result up to the last bit (XLA's CPU division may round
    differently from IEEE's, measured 1 ulp at 1.5 % of these values)."""
    import contextlib

    from helpers import enable_x64

    xy = np.random.default_rng(2).uniform(-1.2, 1.2, (500, 2)).astype(dtype)
    with enable_x64() if dtype == np.float64 else contextlib.nullcontext():
        for f, args in ((P.normalized_to_pixel, (1365, 2048)), (P.pixel_to_normalized, (97, 31))):
            got = f(xy, *args)
            assert isinstance(got, np.ndarray) and got.dtype == dtype
            want = np.asarray(f(jnp.asarray(xy), *args))
            assert want.dtype == dtype
            np.testing.assert_array_max_ulp(got, want, maxulp=1)


@pytest.mark.parametrize("h,w,cr,n", [(512, 768, 20, 8426), (1365, 2048, 50, 23961),
                                      (16384, 16384, 50, 2300875), (1, 1, 3 / 7, 1),
                                      (4, 4, 1, 6)])
def test_num_gaussians_known(h, w, cr, n):
    assert P.num_gaussians(h, w, cr) == n


def test_num_gaussians_matches_integer_formula():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 5000, 2))
        cr = int(rng.integers(1, 2000))
        expect = (3 * h * w) // (7 * cr)
        if 1 <= expect <= h * w:
            assert P.num_gaussians(h, w, cr) == expect
        else:
            with pytest.raises(ValueError):
                P.num_gaussians(h, w, cr)


@pytest.mark.parametrize("cr", [0, -5, float("nan"), float("inf"), "abc", None])
def test_num_gaussians_rejects_bad_cr(cr):
    with pytest.raises(ValueError, match=r"cr=.*must be a finite positive number.*cr must be in|cr=.*not a number.*cr must be in") as e:
        P.num_gaussians(100, 200, cr)
    assert "100x200" in str(e.value)


def test_num_gaussians_out_of_range_gives_range():
    lo, hi = P.cr_range(100, 200)
    assert lo == pytest.approx(3 / 7) and hi == pytest.approx(3 * 100 * 200 / 7)
    with pytest.raises(ValueError, match=r"N=0 .*cr must be in \[0.4286, 8571.4285\]"):
        P.num_gaussians(100, 200, 10000)
    with pytest.raises(ValueError, match=r"N=28571 .*H\*W"):
        P.num_gaussians(100, 200, 0.3)
    assert P.num_gaussians(100, 200, hi * (1 - 1e-9)) == 1


@pytest.mark.parametrize("h,w", [(0, 5), (5, -1), (2.5, 3), (True, 3)])
def test_num_gaussians_rejects_bad_size(h, w):
    with pytest.raises(ValueError, match="must be a positive integer"):
        P.num_gaussians(h, w, 10)


@pytest.mark.parametrize("h,w", [(1, 2), (7, 1), (3, 5), (100, 200), (512, 768)])
def test_the_suggested_cr_bounds_are_themselves_valid(h, w):
    import re

    with pytest.raises(ValueError) as err:
        P.num_gaussians(h, w, 1e12)
    lo, hi = re.search(r"cr must be in \[([^,]+), ([^\]]+)\]", str(err.value)).groups()
    assert P.num_gaussians(h, w, float(lo)) <= h * w and P.num_gaussians(h, w, float(hi)) == 1


def test_a_one_pixel_image_names_its_single_valid_cr():
    with pytest.raises(ValueError, match=r"cr must be 3/7 = 0.42857142857142855"):
        P.num_gaussians(1, 1, 0.4286)
    assert P.num_gaussians(1, 1, 0.42857142857142855) == 1
