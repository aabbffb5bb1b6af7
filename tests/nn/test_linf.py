"""LinfDistLinear and MeanShiftNorm: reference agreement, gradients, Lipschitz facts."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.nn import LinfDistLinear, MeanShiftNorm, set_p
from lipcert.nn.kernels import lp_dist
from lipcert.nn.kernels.reference import lp_dist_naive

P_VALUES = [1.0, 2.0, 8.0, 1000.0, math.inf]


@pytest.mark.parametrize("p", P_VALUES)
def test_layer_matches_naive_formula(p):
    layer = LinfDistLinear(7, 5, p=p, bias=True).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(6, 7, dtype=torch.float64)
    expected = lp_dist_naive(x, layer.weight, p) + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", P_VALUES)
def test_gradcheck_float64(p):
    # random continuous inputs: no ties in the max with probability 1
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lp_dist(x, w, p), (x, w))


def test_p_inf_gradient_only_on_argmax_coordinate():
    layer = LinfDistLinear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    nonzero_per_pair = (x.grad != 0).sum(1)
    assert (nonzero_per_pair <= 3).all()  # at most one coordinate per output unit
    diff = (x.detach()[:, None, :] - layer.weight.detach()[None]).abs()
    argmax = diff.argmax(-1)
    expected = torch.zeros_like(x)
    sign = torch.sign(torch.gather(x.detach()[:, None, :] - layer.weight.detach()[None], 2, argmax[..., None]))[..., 0]
    expected.scatter_add_(1, argmax, sign)
    torch.testing.assert_close(x.grad, expected)


def test_large_p_is_finite_and_close_to_inf():
    layer = LinfDistLinear(50, 8, p=1000.0)
    x = torch.randn(16, 50) * 100  # |t|^1000 overflows unless computed stably
    y = layer(x)
    assert torch.isfinite(y).all()
    set_p(layer, math.inf)
    y_inf = layer(x)
    # ||t||_inf <= ||t||_p <= d^(1/p) ||t||_inf
    assert (y >= y_inf * (1 - 1e-5)).all() and (y <= y_inf * 50 ** (1 / 1000) * (1 + 1e-5)).all()


def test_identity_init_computes_shifted_identity():
    layer = LinfDistLinear(5, 12, identity_init=True)
    x = torch.rand(3, 5)  # within the data range, far above -c
    y = layer(x)
    i = torch.arange(12)
    torch.testing.assert_close(y, x[:, i % 5] + 10.0)


def test_identity_init_rejects_shrinking_layer():
    with pytest.raises(ValueError, match="in_features <= out_features"):
        LinfDistLinear(10, 5, identity_init=True)


@pytest.mark.parametrize("p", [2.0, 8.0, math.inf])
def test_layer_lipschitz_random_pairs(p):
    """||f(a) - f(b)||_inf <= L ||a - b||_inf with L = d^(1/p) (Zhang22 Prop. 4.1), = 1 at p = inf."""
    layer = LinfDistLinear(40, 30, p=p).double()
    a = torch.randn(500, 40, dtype=torch.float64)
    b = a + torch.randn(500, 40, dtype=torch.float64) * torch.rand(500, 1, dtype=torch.float64)
    ratio = (layer(a) - layer(b)).abs().amax(1) / (a - b).abs().amax(1)
    assert ratio.max() <= layer.linf_lipschitz() * (1 + 1e-12)


def test_prop_4_1_bound_is_attained_up_to_constant():
    """The d^(1/p) factor is real: moving all coordinates by delta moves ||x - w||_p by d^(1/p) delta."""
    d, p = 64, 4.0
    layer = LinfDistLinear(d, 1, p=p).double()
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.ones(1, d, dtype=torch.float64)
    delta = 0.1
    change = (layer(x + delta) - layer(x)).abs().item()
    assert math.isclose(change, d ** (1 / p) * delta, rel_tol=1e-9)


def test_mean_shift_train_and_eval():
    norm = MeanShiftNorm(3, momentum=0.5)
    x = torch.randn(8, 3) + torch.tensor([1.0, 2.0, 3.0])
    y = norm(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(norm.running_mean, 0.5 * x.mean(0))
    norm.eval()
    torch.testing.assert_close(norm(x), x - norm.running_mean)
    # conv-shaped input: mean over batch and space per channel
    norm2 = MeanShiftNorm(2)
    z = torch.randn(4, 2, 5, 5)
    torch.testing.assert_close(norm2(z).mean((0, 2, 3)), torch.zeros(2), atol=1e-6, rtol=0)


def test_mean_shift_eval_is_one_lipschitz_and_sample_independent():
    norm = MeanShiftNorm(4)
    norm(torch.randn(32, 4))
    norm.eval()
    a = torch.randn(10, 4)
    # eval output of one sample does not depend on the rest of the batch
    torch.testing.assert_close(norm(a)[:1], norm(a[:1]))
    b = a + 0.3 * torch.randn(10, 4)
    assert torch.allclose((norm(a) - norm(b)).abs(), (a - b).abs())


def test_mean_shift_wrong_channels_is_clear():
    with pytest.raises(ValueError, match="channels"):
        MeanShiftNorm(3)(torch.randn(2, 4))


def test_invalid_p_rejected():
    layer = LinfDistLinear(3, 2, p=0.5)
    with pytest.raises(ValueError, match="p must be >= 1"):
        layer(torch.randn(2, 3))
