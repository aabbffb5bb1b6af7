"""The sqrt(rho)-Lipschitz residual layer of Fazlyab23 Prop. 3.1 (lipcert/nn/residual_l2.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.nn.residual_l2 import SqrtRhoResidual


@pytest.mark.parametrize("t_rule", ["aol", "sll"])
@pytest.mark.parametrize("rho", [0.3, 1.0, 4.0])
def test_condition_of_prop31_holds(t_rule, rho):
    torch.manual_seed(0)
    layer = SqrtRhoResidual(12, 20, rho=rho, t_rule=t_rule).double()
    if t_rule == "sll":
        with torch.no_grad():
            layer.log_q.normal_()
    w, t = layer.weight, layer.t_diag()
    gap = 2 * rho * torch.diag(1 / t) - w @ w.T  # (alpha + beta) = 1 for ReLU
    assert torch.linalg.eigvalsh(gap).min() >= -1e-9 * gap.abs().max()


@pytest.mark.parametrize("rho", [0.25, 1.0, 3.0])
def test_sqrt_rho_lipschitz_empirically(rho):
    torch.manual_seed(1)
    layer = SqrtRhoResidual(8, 16, rho=rho).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer.bias.normal_()
    sr = float(layer.rho().sqrt())  # the stored (float32) log rho, read in float64
    assert sr == pytest.approx(math.sqrt(rho), rel=1e-6)
    x = torch.randn(3000, 8, dtype=torch.float64)
    x2 = x + 0.05 * torch.randn_like(x)
    ratio = (layer(x) - layer(x2)).norm(dim=1) / (x - x2).norm(dim=1)
    assert float(ratio.max()) <= sr * (1 + 1e-9)
    assert float(ratio.max()) > 0.5 * sr  # not vacuous
    xs = x[:200].clone().requires_grad_(True)
    jac = torch.stack([torch.autograd.grad(layer(xs)[:, k].sum(), xs)[0] for k in range(8)], 1)
    assert float(torch.linalg.matrix_norm(jac, 2).max()) <= sr * (1 + 1e-9)


def test_forward_with_given_t_and_gradients():
    layer = SqrtRhoResidual(6, rho=2.0)
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), layer(x, layer.t_diag()))
    layer(x).sum().backward()
    assert layer.log_rho.grad is not None and layer.weight.grad is not None
    fixed = SqrtRhoResidual(6, learn_rho=False)
    assert "log_rho" not in dict(fixed.named_parameters())


def test_error_bound_covers_float32_evaluation():
    torch.manual_seed(2)
    layer = SqrtRhoResidual(10, 14, rho=1.5).double()
    x = torch.rand(64, 10, dtype=torch.float64) * 4 - 2
    t = layer.t_diag().detach()
    out64, err = layer.error_bound(x, torch.zeros_like(x), t, 2.0**-24)
    l32 = SqrtRhoResidual(10, 14, rho=1.5)
    l32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    with torch.no_grad():
        out32 = l32(x.float(), t.float()).double()
    assert ((out32 - out64).abs() <= err).all()
    assert float(err.max()) < 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError, match="activations"):
        SqrtRhoResidual(4, activation="tanh")
    with pytest.raises(ValueError, match="t_rule"):
        SqrtRhoResidual(4, t_rule="eye")
    with pytest.raises(ValueError, match="rho"):
        SqrtRhoResidual(4, rho=0.0)
