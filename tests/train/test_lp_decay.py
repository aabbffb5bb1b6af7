"""l_p weight decay (Zhang et al. 2021 code, AdamW-l_p) and the hinge max/mean mix."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.losses import hinge_loss
from lipcert.train.optim import apply_lp_weight_decay, lp_decay_direction
from tests.conftest import tiny_linf_net


@pytest.mark.parametrize("p", [2.0, 3.5, 8.0, 20.5, 233.7])
def test_direction_is_the_gradient_of_half_the_squared_row_norm(p):
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    (0.5 * w.abs().pow(p).sum(1).pow(2.0 / p)).sum().backward()
    torch.testing.assert_close(lp_decay_direction(w.detach(), p), w.grad, rtol=1e-10, atol=1e-12)


def test_p2_is_plain_decay_and_p_inf_decays_only_the_largest_entry():
    w = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(lp_decay_direction(w, 2.0), w)
    d = lp_decay_direction(w, math.inf)
    idx = w.abs().argmax(1)
    assert (d != 0).sum(1).tolist() == [1] * 4
    torch.testing.assert_close(d[torch.arange(4), idx], w[torch.arange(4), idx])


def test_large_p_does_not_overflow():
    w = torch.tensor([[1e3, -2e3, 5.0]], dtype=torch.float32)
    d = lp_decay_direction(w, 1000.0)
    assert torch.isfinite(d).all() and abs(float(d[0, 1]) + 2e3) < 20  # ~ the inf-norm limit


def test_apply_decays_lp_rows_and_other_parameters():
    net = tiny_linf_net(width=8, depth=2, p=8.0)
    before = {n: t.detach().clone() for n, t in net.named_parameters()}
    apply_lp_weight_decay(net, lr=0.1, decay=0.5)
    for name, t in net.named_parameters():
        module = net.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith("weight") and hasattr(module, "relaxation"):
            expect = before[name] - 0.05 * lp_decay_direction(before[name], 8.0)
        else:
            expect = before[name] * (1 - 0.05)
        torch.testing.assert_close(t.detach(), expect)


def test_hinge_mix():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 1])
    theta = 1.0
    # max part: relu(theta - margin) = relu(1 - 0.5) = 0.5, relu(1 - 1) = 0 -> mean 0.25
    assert float(hinge_loss(logits, y, theta)) == pytest.approx(0.25)
    # mean part over all K columns (true column 0): sample 0: (0 + relu(1-2) + relu(1-0.5)) / 3 = 0.5/3;
    # sample 1: (relu(1-2) + 0 + relu(1-1)) / 3 = 0
    expect = 0.75 * 0.25 + 0.25 * (0.5 / 3 + 0) / 2
    assert float(hinge_loss(logits, y, theta, mix=0.75)) == pytest.approx(expect)
    with pytest.raises(ValueError, match="mix"):
        hinge_loss(logits, y, theta, mix=1.5)
