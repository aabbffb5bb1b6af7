"""CRM loss (Fazlyab23 Eq. 5-8): soft radius, Prop. 2.1, indicator, cap, choice of g, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.losses.crm import crm_loss, pairwise_radii, soft_radius


def setup(b=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (b,), generator=g)
    a = torch.rand(k, k, generator=g, dtype=torch.float64) + 0.5
    lip = (a + a.T) / 2
    lip.fill_diagonal_(0)
    return logits, y, lip


def test_pairwise_radii_definition():
    logits, y, lip = setup()
    r = pairwise_radii(logits, y, lip)
    for n in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if i == int(y[n]):
                assert math.isinf(float(r[n, i]))
            else:
                assert float(r[n, i]) == pytest.approx(float((logits[n, y[n]] - logits[n, i]) / lip[y[n], i]))


@pytest.mark.parametrize("t", [0.5, 5.0, 50.0])
def test_prop_2_1(t):
    """R_soft <= min_i R_i <= R_soft + log(K - 1) / t (Fazlyab23 Eq. 7)."""
    logits, y, lip = setup(b=64, k=7)
    r = pairwise_radii(logits, y, lip)
    rs, rmin = soft_radius(r, t), r.amin(1)
    assert (rs <= rmin + 1e-12).all()
    assert (rmin <= rs + math.log(6) / t + 1e-12).all()


def test_loss_parts_indicator_and_cap():
    logits, y, lip = setup(b=32)
    out = crm_loss(logits, y, lip, t=5.0, lam=2.0)
    correct = logits.argmax(1) == y
    assert torch.equal(out.active, correct)
    rs = out.soft_radius
    expected = torch.nn.functional.cross_entropy(logits, y) + 2.0 * torch.where(correct, -rs, torch.zeros_like(rs)).sum() / 32
    torch.testing.assert_close(out.loss, expected)
    capped = crm_loss(logits, y, lip, t=5.0, lam=2.0, r0=float(out.min_radius[correct].median()))
    assert capped.active.sum() < correct.sum() and not (capped.active & (capped.min_radius >= capped.min_radius[correct].median())).any()
    exp = crm_loss(logits, y, lip, t=5.0, lam=2.0, g="exp")
    torch.testing.assert_close(exp.penalty, 2.0 * torch.where(correct, torch.exp(-5 * rs) / 5, torch.zeros_like(rs)).sum() / 32)
    zero = crm_loss(logits, y, lip, lam=0.0)
    torch.testing.assert_close(zero.loss, zero.ce)


def test_g_is_decreasing_in_the_radius():
    logits, y, lip = setup(b=8)
    for g in ("linear", "exp"):
        a = crm_loss(logits, y, lip, g=g, lam=1.0)
        b = crm_loss(logits, y, lip * 0.5, g=g, lam=1.0)  # halving L doubles every radius
        assert b.penalty <= a.penalty


def test_gradcheck():
    logits, y, lip = setup(b=6, k=4)
    logits.requires_grad_(True)
    lip = lip.clone().requires_grad_(True)
    for g in ("linear", "exp"):
        assert torch.autograd.gradcheck(lambda z, l: crm_loss(z, y, l, t=3.0, lam=1.5, g=g).loss, (logits, lip))


def test_per_sample_pairwise_and_errors():
    logits, y, lip = setup(b=4)
    batch = lip.expand(4, -1, -1)
    torch.testing.assert_close(pairwise_radii(logits, y, batch), pairwise_radii(logits, y, lip))
    with pytest.raises(ValueError):
        crm_loss(logits, y, lip, g="hinge")
    with pytest.raises(ValueError):
        soft_radius(pairwise_radii(logits, y, lip), 0.0)
    with pytest.raises(ValueError):
        crm_loss(logits, y, lip, lam=-1)
