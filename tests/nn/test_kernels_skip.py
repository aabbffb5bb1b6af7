"""The float32 general-p CPU kernels skip negligible powers (cpu_kernels.cpp, ``skip_thresholds``).

Checked against the float64 reference: the thresholds satisfy their bounds exactly (and are not
needlessly loose), terms just above the thresholds are kept, those below change nothing beyond
the stated bound, ties, large D, tile edges, and p in {1.5, 8, 20.5, 233.7, 1000, 10^4}.
"""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.nn import kernels as K
from lipcert.nn.kernels import cpu, reference

pytestmark = pytest.mark.skipif(not K.BACKENDS["cpu"].supports(torch.empty(0)), reason="native CPU kernels unavailable")

PS = [1.5, 8.0, 20.5, 233.7, 1000.0, 1e4]


def _run(x, w, p, g):
    K.set_backend("cpu")
    try:
        xa, wa = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = K.lp_dist(xa, wa, p)
        y.backward(g)
    finally:
        K.set_backend(None)
    xr, wr = x.double().requires_grad_(True), w.double().requires_grad_(True)
    yr = reference.lp_dist(xr, wr, p)
    yr.backward(g.double())
    return (y.detach(), xa.grad, wa.grad), (yr.detach(), xr.grad, wr.grad)


def _grad_tol(p: float) -> float:  # as tests/nn/test_kernels.py: (p - 1) x the relative error of |t| / y
    return max(2e-6, 3e-7 * p)


def _check(x, w, p, g, ytol=2e-6):
    (y, gx, gw), (yr, gxr, gwr) = _run(x, w, p, g)
    assert ((y.double() - yr).abs() / yr.abs().clamp_min(1e-30)).max().item() < ytol, p
    for a, b in ((gx, gxr), (gw, gwr)):
        err = (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
        assert err < _grad_tol(p), (p, err)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("d", [1, 15, 16, 17, 784, 5000])
def test_thresholds_meet_their_bounds(p, d):
    tf, tb, _ = cpu.skip_thresholds(p, d)
    cap = torch.tensor(0.99).item()  # the float32 cap, 0.99000001
    assert 0 < tf <= cap and 0 <= tb < 1
    # forward: theta_f^p <= 2^-24 / d, and not more than a few ulps looser than that (or the cap)
    assert math.log2(tf) * p <= -(24 + math.log2(d)) + 1e-12
    exact = 2.0 ** (-(24 + math.log2(d)) / p)
    assert tf == cap or tf >= exact * (1 - 1e-6)
    # backward: theta_b^(p-1) <= 2^-24
    assert math.log2(tb) * (p - 1) <= -24 + 1e-12
    assert tb >= 2.0 ** (-24 / (p - 1)) * (1 - 1e-6)


@pytest.mark.parametrize("p", PS)
def test_random_shapes_at_tile_edges(p):
    gen = torch.Generator().manual_seed(int(p * 10))
    for b, n, d in [(1, 1, 1), (3, 5, 17), (2, 4, 16), (7, 9, 33), (5, 13, 100)]:
        x, w = torch.randn(b, d, generator=gen), torch.randn(n, d, generator=gen)
        _check(x, w, p, torch.randn(b, n, generator=gen))


@pytest.mark.parametrize("p", [20.5, 233.7, 1000.0])
def test_large_d(p):
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 5000, generator=gen), torch.randn(6, 5000, generator=gen)
    _check(x, w, p, torch.randn(4, 6, generator=gen))


@pytest.mark.parametrize("p", [20.5, 233.7, 1000.0])
def test_ties_at_the_max(p):
    # many coordinates at exactly the max: s = number of ties, every tie gets gradient
    x = torch.zeros(3, 64)
    w = torch.zeros(5, 64)
    w[:, ::3] = 2.0
    w[1, ::2] = -2.0
    w[2] = torch.linspace(-2, 2, 64)
    _check(x, w, p, torch.randn(3, 5, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("p", [20.5, 233.7])
def test_terms_just_above_threshold_are_kept(p):
    # one term at the max (a = 1) and d - 1 terms at a = 2 theta_f: together they make y differ
    # from m by ~(2^p 2^-24)^(1/p) - a skipped term here would show up far above the tolerance.
    d = 4096
    tf, _, used = cpu.skip_thresholds(p, d)
    x = torch.zeros(2, d)
    w = torch.full((3, d), 2 * tf)
    w[:, 0] = 1.0
    w[1, 1:] = tf * (1 - 1e-3)  # just below: skipped, changes y by < 2^-24 / p relative
    w[2, 1:] = -tf * 1.001  # just above, negative sign
    g = torch.ones(2, 3)
    (yk, gx, gw), (yr, _, gwr) = _run(x, w, p, g)
    assert ((yk.double() - yr).abs() / yr).max().item() < 2e-6
    # gradients: 4096 equal float32 terms are summed in s, so allow that accumulation
    # (the dense portable build sums them sequentially per lane: ~sqrt(D) 2^-24 relative)
    assert (gw.double() - gwr).abs().max().item() < (_grad_tol(p) + 4096 ** 0.5 * 2 ** -24) * gwr.abs().max().item()
    y = cpu.lp_forward(x, w, p)
    s0 = 1 + (d - 1) * (2 * tf) ** p
    assert abs(y[0, 0].item() - s0 ** (1 / p)) < 2e-6 * s0 ** (1 / p)
    assert y[0, 0].item() > 1 + 0.05 / p or not used or (2 * tf) ** p * (d - 1) < 0.05


@pytest.mark.parametrize("p", [20.5, 233.7, 1000.0])
def test_backward_skip_bound(p):
    # gradient lanes just below theta_b are skipped: the gradient there is < 2^-24 sum_n |g| (here
    # far below the tolerance), lanes just above are kept exactly
    d = 64
    _, tb, _ = cpu.skip_thresholds(p, d)
    x = torch.zeros(1, d)
    w = torch.zeros(2, d)
    w[:, 0] = 1.0
    w[0, 1:] = tb * 1.01
    w[1, 1:] = tb * 0.99
    g = torch.tensor([[1.0, 1.0]])
    (y, gx, gw), (yr, gxr, gwr) = _run(x, w, p, g)
    tol = _grad_tol(p)  # rounding of the kept terms, relative to the largest gradient
    assert (gw.double() - gwr).abs().max().item() <= 2 ** -24 * 1.0 + tol * gwr.abs().max().item()
    assert (gx.double() - gxr).abs().max().item() <= 2 ** -24 * 2.0 + tol * gxr.abs().max().item()
    # the skipped lanes: exactly the bound's size, reference 4.9e-8 < 2^-24 |g|
    assert (gwr[1, 1:].abs() < 2 ** -24).all() and (gw[1, 1:] == 0).all() == cpu.skip_thresholds(p, d)[2]
    kept = gwr[0, 1:].abs()
    assert (kept > 0).all() and ((gw[0, 1:].double() - gwr[0, 1:]).abs() <= tol * kept).all()


def test_zero_rows_and_zero_gradients():
    x = torch.zeros(3, 40)
    w = torch.zeros(4, 40)
    w[1] = torch.randn(40)
    g = torch.randn(3, 4)
    g[0] = 0
    (y, gx, gw), (yr, gxr, gwr) = _run(x, w, 20.5, g)
    assert torch.equal(y[:, 0], torch.zeros(3)) and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(gx.double(), gxr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), gwr, rtol=1e-5, atol=1e-6)
