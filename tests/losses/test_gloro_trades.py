"""The authors' GloRo (TRADES-style) and LMT losses of Fazlyab23's baselines (o4lc/CRM-LipLT
``Losses/GloRo.py``, ``Losses/CrossEntropy.py`` ``LMTCrossEntropy``, ``Utilities/Perturbations.py``),
against plain references written out here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lipcert.losses import gloro_trades_loss, pairwise_from, pairwise_worst_logits


def _ref_gloro_trades(z, y, pair, eps, lam):
    """Sample by sample, as the authors: [z | max_{i != y} z_i + eps L_yi]; CE split by correctness
    (sums to the mean CE); nn.KLDivLoss(batchmean)(log_softmax(aug), [softmax(z), 1e-7])."""
    b, k = z.shape
    rows = []
    for n in range(b):
        others = [z[n, i] + eps * pair[y[n], i] for i in range(k) if i != y[n]]
        rows.append(torch.cat([z[n], torch.stack(others).max().view(1)]))
    aug = torch.stack(rows)
    pred = z.argmax(1)
    ok = pred == y
    ce = F.cross_entropy(z[ok], y[ok]) * ok.sum() / b if ok.any() else 0.0
    ce = ce + (F.cross_entropy(z[~ok], y[~ok]) * (~ok).sum() / b if (~ok).any() else 0.0)
    target = torch.hstack([F.softmax(z, 1), 1e-7 * torch.ones(b, 1, dtype=z.dtype)])
    kl = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(aug, 1), target)
    return ce + lam * kl


def _ref_lmt(z, y, pair, eps, mu):
    b, k = z.shape
    pert = torch.zeros_like(z)
    for n in range(b):
        if z[n].argmax() != y[n]:
            continue
        for i in range(k):
            if i != y[n]:
                pert[n, i] = eps * pair[y[n], i]
    return F.cross_entropy(z + mu * pert, y)


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=dtype) * 2
    y = torch.randint(0, 5, (7,), generator=g)
    y[:3] = z[:3].argmax(1)  # some correct, some not
    a = torch.rand(5, 5, generator=g, dtype=dtype) + 0.5
    return z, y, (a + a.T) / 2


def test_gloro_trades_equals_the_authors_formula():
    z, y, pair = _data()
    for eps, lam in [(0.3, 0.1), (1.0, 3.0), (0.0, 1.0)]:
        torch.testing.assert_close(gloro_trades_loss(z, y, pairwise_worst_logits(z, y, eps, pair), lam),
                                   _ref_gloro_trades(z, y, pair, eps, lam), rtol=1e-12, atol=1e-12)


def test_gloro_trades_gradients_equal_the_references_and_gradcheck():
    z, y, pair = _data()
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    p1 = pair.clone().requires_grad_(True)
    p2 = pair.clone().requires_grad_(True)
    gloro_trades_loss(z1, y, pairwise_worst_logits(z1, y, 0.4, p1), 2.0).backward()
    _ref_gloro_trades(z2, y, p2, 0.4, 2.0).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12)
    zz = z.clone().requires_grad_(True)
    pp = pair.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gloro_trades_loss(a, y, pairwise_worst_logits(a, y, 0.4, b), 2.0),
                                    (zz, pp))


def test_gloro_trades_kl_is_a_softplus_of_the_bot_logit():
    """For the K real classes log p_j - log q_j = log(1 + e^bot / S): the KL term is that plus the
    1e-7 floor's own term (a closed form of the same loss)."""
    z, y, pair = _data()
    worst = pairwise_worst_logits(z, y, 0.5, pair)
    bot = worst.masked_fill(F.one_hot(y, 5).bool(), -math.inf).amax(1)
    lse = torch.logsumexp(z, 1)
    log_q_bot = bot - torch.logaddexp(lse, bot)
    kl = (F.softplus(bot - lse) + 1e-7 * (math.log(1e-7) - log_q_bot)).mean()
    torch.testing.assert_close(gloro_trades_loss(z, y, worst, 1.0) - F.cross_entropy(z, y), kl, rtol=1e-12, atol=1e-14)


def test_lmt_equals_the_authors_formula_and_gradcheck():
    z, y, pair = _data()
    for eps, mu in [(0.3, 0.001), (0.5, 2.0)]:
        ours = F.cross_entropy(pairwise_worst_logits(z, y, mu * eps, pair, correct_only=True), y)
        torch.testing.assert_close(ours, _ref_lmt(z, y, pair, eps, mu), rtol=1e-12, atol=1e-12)
    zz = z.clone().requires_grad_(True)
    pp = pair.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: F.cross_entropy(pairwise_worst_logits(a, y, 0.7, b, correct_only=True), y), (zz, pp))


def test_pairwise_from_the_three_modes_as_the_authors():
    g = torch.Generator().manual_seed(1)
    cls = torch.rand(4, generator=g, dtype=torch.float64)
    pair = torch.rand(4, 4, generator=g, dtype=torch.float64)
    assert pairwise_from("pairwise", pair, cls, 2.0) is pair
    pc = pairwise_from("per_class", pair, cls, 2.0)
    for i in range(4):
        for j in range(4):
            assert pc[i, j] == cls[i] + cls[j]
    torch.testing.assert_close(pairwise_from("global", pair, cls, torch.tensor(2.0, dtype=torch.float64)),
                               torch.full((4, 4), 2.0 * math.sqrt(2), dtype=torch.float64))
