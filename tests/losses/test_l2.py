"""Worst-logit losses of Huang21 (LMT, BCP Eq. 24, GloRo, Eq. 25 mixture, Eq. 12/26 sparsity)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.losses import (
    bcp_worst_logits,
    certified_radius,
    gloro_logits,
    lmt_worst_logits,
    robust_mixture_loss,
    sparsity_loss,
)
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)


def test_lmt_adds_sqrt2_eps_l_to_every_other_class():
    z = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 1.0]])
    y = torch.tensor([1, 0])
    w = lmt_worst_logits(z, y, 0.5, 2.0)
    shift = math.sqrt(2) * 0.5 * 2.0
    torch.testing.assert_close(w, torch.tensor([[1.0 + shift, 3.0, shift], [2.0, shift, 1.0 + shift]]))
    per = lmt_worst_logits(z, y, 0.5, torch.tensor([1.0, 0.0]))  # a local bound per sample
    torch.testing.assert_close(per[1], z[1])
    # the worst logits still predict y exactly when the Lipschitz certificate holds at eps
    z = torch.randn(200, 5) * 3
    y = z.argmax(1)
    lip = torch.rand(200) * 2
    ok = lmt_worst_logits(z, y, 0.4, lip).argmax(1) == y
    r = certified_radius(z, y, lip)
    # two float32 formulas of one inequality: they may only disagree within rounding of eps
    # (a few ulps of |z| / (sqrt(2) L) ~ 1e-6 relative); compare every sample outside that band
    clear = (r - 0.4).abs() > 1e-5 * (1 + z.abs().amax(1) / lip.clamp_min(1e-6))
    assert clear.sum() >= 195 and torch.equal(ok[clear], (r > 0.4)[clear])


def test_bcp_worst_logits_and_gloro_extra_class():
    z = torch.tensor([[1.0, 3.0, 0.0]])
    y = torch.tensor([1])
    m = torch.tensor([[0.5, 0.0, 4.0]])  # lower bounds of z_y - z_i
    w = bcp_worst_logits(z, y, m)
    torch.testing.assert_close(w, torch.tensor([[2.5, 3.0, -1.0]]))  # z*_i = z_y - m_i, Huang21 Eq. 24
    g = gloro_logits(z, y, w)
    torch.testing.assert_close(g, torch.tensor([[1.0, 3.0, 0.0, 2.5]]))  # [z | max_{i != y} z*_i]
    assert g.argmax(1).item() == 1  # certifiable: z_y beats the extra logit
    assert gloro_logits(z, y, bcp_worst_logits(z, y, torch.tensor([[-0.1, 0.0, 4.0]]))).argmax(1).item() == 3


def test_mixture_eq25_and_sparsity_eq26():
    torch.manual_seed(0)
    z, zw = torch.randn(8, 4), torch.randn(8, 5)
    y = torch.randint(0, 4, (8,))
    torch.testing.assert_close(robust_mixture_loss(z, zw, y, 0.0), F.cross_entropy(z, y))
    torch.testing.assert_close(robust_mixture_loss(z, zw, y, 1.0), F.cross_entropy(zw, y))
    torch.testing.assert_close(robust_mixture_loss(z, zw, y, 0.3), 0.7 * F.cross_entropy(z, y) + 0.3 * F.cross_entropy(zw, y))
    ub = torch.tensor([[1.0, -2.0]])
    th_minus_lb = torch.tensor([[-1.0, 3.0]])
    got = sparsity_loss([(ub, th_minus_lb), (torch.tensor([[4.0, -4.0]]), None)], lam_theta=0.1)
    assert float(got) == pytest.approx((1.0 + 0.0) / 2 + 0.1 * (0.0 + 3.0) / 2 + (4.0 + 0.0) / 2)
    with pytest.raises(ValueError):
        sparsity_loss([])


def test_worst_logits_are_differentiable():
    z = torch.randn(4, 3, requires_grad=True)
    lip = torch.rand(4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    robust_mixture_loss(z, lmt_worst_logits(z, y, 0.3, lip), y, 0.5).backward()
    assert torch.isfinite(z.grad).all() and (lip.grad > 0).all()  # a larger bound always costs
