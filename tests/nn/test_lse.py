"""Log-sum-exp relaxation (EMAReport Eq. 6): kernel vs formula, gradients, 1-Lipschitz at every p, rounding."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.nn import LinfDistLinear, set_p
from lipcert.nn.kernels.reference import lp_dist_naive
from lipcert.nn.lse import lse_dist, lse_dist_naive
from tests.linf_family_helpers import linf_ratio, random_pairs, train_layer_briefly

P_VALUES = [0.5, 2.0, 8.0, 100.0, 1000.0]


@pytest.mark.parametrize("p", P_VALUES)
def test_matches_logsumexp_formula(p):
    x = torch.randn(7, 9, dtype=torch.float64)
    w = torch.randn(5, 9, dtype=torch.float64)
    torch.testing.assert_close(lse_dist(x, w, p), lse_dist_naive(x, w, p), rtol=1e-12, atol=1e-12)


def test_chunked_path_matches(monkeypatch):
    import lipcert.nn.lse as lse

    monkeypatch.setattr(lse, "CHUNK_ELEMENTS", 50)  # forces one output unit per chunk
    x = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 11, dtype=torch.float64, requires_grad=True)
    y = lse.lse_dist(x, w, 3.0)
    torch.testing.assert_close(y, lse_dist_naive(x, w, 3.0))
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    rx, rw = torch.autograd.grad(lse_dist_naive(x, w, 3.0), (x, w), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("p", [0.5, 4.0, 50.0])
def test_gradcheck_float64(p):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lse_dist(x, w, p), (x, w))


@pytest.mark.parametrize("p", P_VALUES)
def test_sandwiched_between_linf_and_linf_plus_log_d_over_p(p):
    x = torch.randn(20, 30, dtype=torch.float64) * 3
    w = torch.randn(8, 30, dtype=torch.float64)
    y = lse_dist(x, w, p)
    d_inf = lp_dist_naive(x, w, math.inf)
    assert (y >= d_inf - 1e-12).all()
    assert (y <= d_inf + math.log(30) / p + 1e-12).all()


def test_p_inf_is_exact_linf_distance():
    x, w = torch.randn(5, 7), torch.randn(3, 7)
    torch.testing.assert_close(lse_dist(x, w, math.inf), lp_dist_naive(x, w, math.inf))


def test_large_inputs_and_p_stay_finite():
    x = torch.randn(8, 40) * 100
    w = torch.randn(6, 40)
    y = lse_dist(x, w, 1000.0)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("p", [0.5, 2.0, 8.0, 100.0])
@pytest.mark.parametrize("trained", [False, True])
def test_lse_layer_is_one_lipschitz_at_every_p(p, trained):
    layer = LinfDistLinear(12, 7, p=p, relaxation="lse", bias=True).double()
    a, b = random_pairs((12,), n=128)
    if trained:
        before = layer.weight.detach().clone()
        train_layer_briefly(layer, a[:32])
        assert (layer.weight - before).abs().max() > 0.1
    assert layer.linf_lipschitz() == 1.0
    ratio = linf_ratio(layer, a, b)
    assert (ratio <= 1 + 1e-12).all()
    assert ratio.max() > 0.3


def test_lp_relaxation_is_not_one_lipschitz_but_lse_is():
    """The contrast that motivates LSE: at p = 2 the l_p layer exceeds ratio 1 on some pair, LSE never."""
    torch.manual_seed(0)
    lp = LinfDistLinear(50, 4, p=2.0).double()
    lse = LinfDistLinear(50, 4, p=2.0, relaxation="lse").double()
    lse.weight = lp.weight
    a = torch.randn(200, 50, dtype=torch.float64)
    b = a + 0.01 * torch.sign(torch.randn_like(a))  # move every coordinate: l_p gains up to sqrt(50)
    assert linf_ratio(lp, a, b).max() > 1.5
    assert linf_ratio(lse, a, b).max() <= 1 + 1e-12


@pytest.mark.parametrize("p", [1.0, 8.0, 200.0])
def test_rounding_error_bound_holds_in_float32(p):
    torch.manual_seed(1)
    layer = LinfDistLinear(64, 10, p=p, relaxation="lse", bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(32, 64) * 4
    y32 = layer(x).double()
    layer64 = layer.double()
    y64 = layer64(x.double())
    err = (y32 - y64).abs().amax(1)
    bound = layer64.rounding_error(x.double().abs().amax(1), y64.abs().amax(1), 2.0**-24)
    assert (err <= bound).all()
    assert (bound < 1e-3).all()  # and it is not absurdly loose


def test_set_p_keeps_relaxation_and_lp_refuses_rounding():
    layer = LinfDistLinear(4, 3, relaxation="lse")
    set_p(layer, 5.0)
    assert layer.p == 5.0 and layer.relaxation == "lse"
    assert "relaxation=lse" in repr(layer)
    lp = LinfDistLinear(4, 3, p=5.0)
    with pytest.raises(ValueError, match="only defined for p = inf"):
        lp.rounding_error(torch.ones(1), torch.ones(1), 2.0**-24)
    with pytest.raises(ValueError, match="p > 0"):
        lse_dist(torch.ones(1, 2), torch.ones(1, 2), 0.0)


@pytest.mark.parametrize("p", [20.5, 233.7])
def test_float32_with_underflowing_terms_matches_float64(p):
    # most exponents p (|t| - m) lie below log(tiny): the clamp that keeps them out of the
    # subnormal range must leave values and gradients at float32 accuracy
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 300, generator=gen) * 3
    w = torch.randn(7, 300, generator=gen) * 3
    g = torch.randn(9, 7, generator=gen)
    xa, wa = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = lse_dist(xa, wa, p)
    y.backward(g)
    xr, wr = x.double().requires_grad_(True), w.double().requires_grad_(True)
    yr = lse_dist_naive(xr, wr, p)
    yr.backward(g.double())
    a = (x[:, None, :] - w[None]).abs()
    assert (p * (a - a.amax(-1, keepdim=True)) < math.log(torch.finfo(torch.float32).tiny)).float().mean() > 0.5
    torch.testing.assert_close(y.double(), yr, rtol=2e-6, atol=0)
    for a, b in ((xa.grad, xr.grad), (wa.grad, wr.grad)):
        assert (a.double() - b).abs().max() <= 3e-7 * p * b.abs().max()  # (p - 1) x the error of |t| - y, as for l_p
