"""AOL layers (Prach & Lampert 2022): the rescaled matrix has norm <= 1, the layer computes the
linear part it states, and the l2 bounds read it with its forming error counted."""

from __future__ import annotations

import torch

from lipcert.bounds.layers import affine_op
from lipcert.bounds.lipschitz import global_upper
from lipcert.bounds.chain import LipschitzChain
from lipcert.certify import certify
from lipcert.models import build
from lipcert.nn.aol import AOLLinear, aol_scale


def test_rescaled_matrix_is_a_contraction_for_any_weights():
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 7), (7, 5), (16, 16), (1, 9)]:
        for scale in (1e-3, 1.0, 1e3):
            w = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
            w[:, 0] = 0.0  # a zero column must not make it non-finite
            eff = w * aol_scale(w)
            assert torch.isfinite(eff).all()
            assert torch.linalg.matrix_norm(eff, 2) <= 1 + 1e-12


def test_forward_is_the_stated_linear_part_and_the_operator_counts_its_forming():
    layer = AOLLinear(6, 4).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    op = affine_op(layer, (6,))
    assert op.weight_ops == 6 + 4 + 4
    torch.testing.assert_close(layer(x), op.forward(x) + layer.bias, rtol=1e-14, atol=1e-14)
    # the rigorous bound covers the exact matrix: at least the computed norm, and at most 1 + slack
    sigma = float(torch.linalg.matrix_norm(layer.effective_weight().detach(), 2))
    assert sigma <= op.norm_upper() <= 1 + 1e-9


def test_float32_forming_is_within_the_stated_relative_error():
    """The float32 layer's matrix is within gamma_k (k = weight_ops, u = 2^-24) of the float64 one."""
    layer = AOLLinear(50, 30)
    w64 = layer.weight.detach().double()
    eff64 = w64 * aol_scale(w64)
    eff32 = layer.effective_weight().detach().double()
    k, u = layer.weight_ops, 2.0**-24
    assert ((eff32 - eff64).abs() <= k * u / (1 - k * u) * eff64.abs() + 1e-300).all()


def test_aol_model_certificates_survive_an_attack_at_their_radius():
    torch.manual_seed(0)
    model = build("4c3f", in_shape=(1, 8, 8), activation="relu", width=0.25, dense="aol").eval()
    assert any(isinstance(m, AOLLinear) for m in model.modules())
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # certify the model's own predictions: every radius is then > 0 or a tie
    cert = certify(model, x, y, norm="l2", bound="best", eps=[0.01])
    chain = LipschitzChain.from_model(model)
    assert len(global_upper(chain)) == 7
    ok = cert.radius > 0
    assert ok.any()
    # random directions at 0.999 r and the gradient direction of the margin: no flip
    xr = x[ok].clone().requires_grad_(True)
    r = cert.radius[ok].to(torch.float32) * 0.999
    logits = model(xr)
    top2 = logits.topk(2, dim=1).values
    (top2[:, 0] - top2[:, 1]).sum().backward()
    d = -xr.grad / xr.grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    with torch.no_grad():
        for direction in [d] + [torch.randn_like(d) for _ in range(8)]:
            direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            adv = x[ok] + r.view(-1, 1, 1, 1) * direction
            assert (model(adv).argmax(1) == y[ok]).all()
