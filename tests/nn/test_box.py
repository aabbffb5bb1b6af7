"""Exact interval bounds of l-inf-dist neurons over a box (lipcert/nn/box.py)."""

from __future__ import annotations


import pytest
import torch

from lipcert.nn import LinfDistLinear
from lipcert.nn.box import box_rounding_error, linf_box_bounds, linf_box_bounds_naive


def _box(b=5, d=7, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(b, d, generator=g, dtype=torch.float64) * scale
    r = torch.rand(b, d, generator=g, dtype=torch.float64) * scale
    r[0] = 0  # a degenerate box (a point)
    return c - r, c + r


@pytest.mark.parametrize("seed", range(4))
def test_matches_defining_formula(seed):
    lo, hi = _box(seed=seed)
    w = torch.randn(6, 7, dtype=torch.float64)
    lower, upper, _ = linf_box_bounds(lo, hi, w)
    ref_l, ref_u = linf_box_bounds_naive(lo, hi, w)
    torch.testing.assert_close(lower, ref_l, rtol=0, atol=1e-12)
    # exact: the upper bound is a max of correctly rounded |lo - w|, |hi - w| (no summation order)
    torch.testing.assert_close(upper, ref_u, rtol=0, atol=0)


def test_bounds_are_attained_at_explicit_points():
    lo, hi = _box(b=4, d=9, seed=5)
    w = torch.randn(3, 9, dtype=torch.float64)
    lower, upper, _ = linf_box_bounds(lo, hi, w)
    for n in range(3):
        nearest = torch.minimum(torch.maximum(w[n].expand_as(lo), lo), hi)  # closest point of the box to w_n
        farthest = torch.where((lo - w[n]).abs() >= (hi - w[n]).abs(), lo, hi)  # farthest vertex
        torch.testing.assert_close((nearest - w[n]).abs().amax(1), lower[:, n], rtol=0, atol=1e-12)
        torch.testing.assert_close((farthest - w[n]).abs().amax(1), upper[:, n], rtol=0, atol=0)


def test_point_box_gives_the_distance():
    x = torch.randn(4, 5, dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    lower, upper, _ = linf_box_bounds(x, x, w)
    d = (x[:, None] - w[None]).abs().amax(-1)
    torch.testing.assert_close(upper, d, rtol=0, atol=0)  # exact: a max of |x - w|, order-free
    torch.testing.assert_close(lower, d, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_shift_trick_error_within_stated_bound(scale):
    lo, hi = _box(b=16, d=20, seed=3, scale=scale)
    w = torch.randn(8, 20, dtype=torch.float64) * scale
    lower, upper, shift = linf_box_bounds(lo, hi, w)
    ref_l, _ = linf_box_bounds_naive(lo, hi, w)
    in_absmax = torch.maximum(lo.abs(), hi.abs()).amax(1, keepdim=True)
    bound = box_rounding_error(in_absmax, float(w.abs().max()), torch.maximum(lower.abs(), upper.abs()), shift, 2.0**-53)
    assert ((lower - ref_l).abs() <= bound).all()


def test_layer_interval_bounds_with_bias_and_sampling():
    torch.manual_seed(0)
    layer = LinfDistLinear(6, 4, bias=True).double()
    with torch.no_grad():
        layer.bias.normal_()
    lo, hi = _box(b=3, d=6, seed=2)
    lower, upper = layer.interval_bounds(lo, hi, unit=2.0**-53)
    z = lo + (hi - lo) * torch.rand(500, *lo.shape, dtype=torch.float64)
    y = layer(z.reshape(-1, 6)).reshape(500, 3, 4)
    assert (y >= lower).all() and (y <= upper).all()
    assert (y.amin(0) - lower).max() < 0.2  # close to exact
    layer.p = 8.0
    with pytest.raises(ValueError, match="p = inf"):
        layer.interval_bounds(lo, hi)
