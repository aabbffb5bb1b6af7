"""Residual l-inf-dist neurons (EMAReport Eq. 7): formula, 1-Lipschitz by convexity, rounding, intervals."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.nn import LinfDistConv2d, LinfDistLinear, LinfDistResidual, set_p
from lipcert.nn.kernels.reference import lp_dist_naive
from lipcert.nn.lse import lse_dist_naive
from tests.linf_family_helpers import linf_ratio, random_pairs, train_layer_briefly


def _linear(relaxation="lp", p=math.inf):
    return LinfDistLinear(10, 10, p=p, bias=True, relaxation=relaxation)


def _conv(relaxation="lp", p=math.inf):
    return LinfDistConv2d(3, 3, 3, padding=1, bias=True, relaxation=relaxation, p=p)


@pytest.mark.parametrize("c", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("relaxation,p", [("lp", math.inf), ("lse", 4.0)])
def test_matches_eq7_reference(c, relaxation, p):
    layer = LinfDistResidual(_linear(relaxation, p), c).double()
    inner = layer.layer
    with torch.no_grad():
        inner.bias.normal_()
    z = torch.randn(6, 10, dtype=torch.float64)
    dist = lse_dist_naive(z, inner.weight, p) if relaxation == "lse" else lp_dist_naive(z, inner.weight, p)
    expected = c * z + (1 - c) * (dist + inner.bias)  # u_k = c z_k + (1 - c) ||z - w_k|| + b_k
    torch.testing.assert_close(layer(z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [_linear, _conv])
@pytest.mark.parametrize("c", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("trained", [False, True])
def test_one_lipschitz_random_pairs(make, c, trained):
    layer = LinfDistResidual(make(), c).double()
    shape = (10,) if make is _linear else (3, 5, 5)
    a, b = random_pairs(shape, n=96)
    if trained:
        set_p(layer, 8.0)
        train_layer_briefly(layer, a[:24])
        set_p(layer, math.inf)
    assert layer.linf_lipschitz() == 1.0
    ratio = linf_ratio(layer, a, b)
    assert (ratio <= 1 + 1e-12).all()
    assert ratio.max() > 0.3


def test_lse_residual_one_lipschitz_at_finite_p():
    layer = LinfDistResidual(_linear("lse", 2.0), 0.4).double()
    a, b = random_pairs((10,), n=96)
    assert layer.linf_lipschitz() == 1.0
    assert (linf_ratio(layer, a, b) <= 1 + 1e-12).all()


def test_lp_relaxed_constant_is_convex_combination():
    layer = LinfDistResidual(_linear("lp", 4.0), 0.25)
    assert layer.linf_lipschitz() == pytest.approx(0.25 + 0.75 * 10 ** 0.25)


def test_rejects_non_square_and_bad_c():
    with pytest.raises(ValueError, match="square"):
        LinfDistResidual(LinfDistLinear(4, 5), 0.5)
    with pytest.raises(ValueError, match="square"):
        LinfDistResidual(LinfDistConv2d(3, 3, 3), 0.5)  # no padding: spatial size shrinks
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LinfDistResidual(_linear(), 1.0)
    with pytest.raises(TypeError, match="states no"):
        LinfDistResidual(torch.nn.Linear(3, 3), 0.5)


def test_set_p_reaches_wrapped_layer():
    layer = LinfDistResidual(_conv(), 0.5)
    set_p(layer, 8.0)
    assert layer.layer.p == 8.0


@pytest.mark.parametrize("c", [0.0, 0.6])
def test_float32_rounding_error_bound_holds(c):
    torch.manual_seed(2)
    layer = LinfDistResidual(_conv(), c)
    with torch.no_grad():
        layer.layer.bias.normal_()
    x = torch.randn(8, 3, 6, 6) * 3
    y32 = layer(x).double()
    layer64 = layer.double()
    y64 = layer64(x.double())
    err = (y32 - y64).flatten(1).abs().amax(1)
    bound = layer64.rounding_error(x.double().flatten(1).abs().amax(1), y64.flatten(1).abs().amax(1), 2.0**-24)
    assert (err <= bound).all()


@pytest.mark.parametrize("make", [_linear, _conv])
def test_interval_bounds_contain_samples(make):
    layer = LinfDistResidual(make(), 0.4).double()
    shape = (10,) if make is _linear else (3, 4, 4)
    centre = torch.rand(3, *shape, dtype=torch.float64)
    lo, hi = centre - 0.1, centre + 0.1
    lower, upper = layer.interval_bounds(lo, hi, unit=2.0**-53)
    for _ in range(100):
        y = layer(lo + (hi - lo) * torch.rand_like(lo))
        assert (y >= lower).all() and (y <= upper).all()
