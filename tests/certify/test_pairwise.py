"""Pairwise l2 certificates (Fazlyab23 Eq. 4-5): soundness under attack and brute force, exact rounding
bounds, liplt >= naive, best, labels and errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from lipcert.bounds.liplt import as_ltnet
from lipcert.certify import CertificationError, certify
from lipcert.certify.pairwise import forward_with_error, pairwise_l2
from lipcert.models import build
from lipcert.models.mcnf import MCNF
from lipcert.nn.activations import ReLU
from lipcert.nn.common import Flatten, InputNormalize

from ..bounds.liplt_helpers import blobs, convnet, train_ce


def trained_conv():
    torch.manual_seed(2)
    x, y = blobs(160, (2, 8, 8), 4, spread=0.08)
    return train_ce(convnet(), x, y, steps=60), x, y


def trained_residual():
    torch.manual_seed(3)
    x, y = blobs(160, (1, 4, 4), 4, spread=0.08)
    return train_ce(build("resmlp_l2", in_shape=(1, 4, 4), num_classes=4, width=24, depth=2), x, y, steps=80), x, y


CASES = {"conv": trained_conv(), "residual": trained_residual()}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("bound", ["naive", "liplt"])
def test_pgd_cannot_break_certified_samples(case, bound):
    model, x, y = CASES[case]
    cert = certify(model, x, y, bound=bound)
    assert cert.bound == "upper" and cert.norm == "l2" and cert.method == f"l2_pairwise_{bound}"
    ok = cert.radius > 0
    assert ok.float().mean() > 0.3, "the test needs certified samples"
    # attack every certified sample at (just below) its own radius
    idx = ok.nonzero().flatten()
    broken = l2_attack(model, x[idx], y[idx], cert.radius[idx].float() * 0.999)
    assert not broken.any(), f"samples {idx[broken].tolist()} certified but broken"
    assert l2_attack(model, x[idx], y[idx], cert.radius[idx].float() * (10 if bound == "liplt" else 60)).any()  # not toothless


def l2_attack(model, x, y, radius, steps=25, restarts=2, seed=0):
    """Batched l2 PGD on the margin with a per-sample radius; True where the label changes."""
    g = torch.Generator().manual_seed(seed)
    view = (-1,) + (1,) * (x.dim() - 1)
    broken = torch.zeros(x.shape[0], dtype=torch.bool)
    for _ in range(restarts):
        d = torch.randn(x.shape, generator=g)
        d = d / d.flatten(1).norm(dim=1).view(view) * radius.view(view) * torch.rand(x.shape[0], generator=g).view(view)
        for _ in range(steps):
            d.requires_grad_(True)
            z = model(x + d)
            zy = z.gather(1, y[:, None])[:, 0]
            other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), -1e9).amax(1)
            grad = torch.autograd.grad((other - zy).sum(), d)[0]
            with torch.no_grad():
                d = d + 0.2 * radius.view(view) * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
                d = d * (radius / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(view)
        with torch.no_grad():
            broken |= model(x + d).argmax(1) != y
    return broken


def test_brute_force_two_dimensional():
    """In 2-D, every point of a dense polar grid inside the certified disc keeps the label."""
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 2, generator=g)
    y = ((x[:, 0, 0] - 0.5) * (x[:, 0, 1] - 0.4) > 0).long() + 2 * (x[:, 0, 0] > 0.75).long()
    layers = [InputNormalize([0.5], 0.3), Flatten(), nn.Linear(2, 32), ReLU(), nn.Linear(32, 32), ReLU(), nn.Linear(32, 4)]
    model = train_ce(MCNF(*layers, in_shape=(1, 2)), x, y, steps=150, lr=0.03)
    cert = certify(model, x[:60], y[:60], bound="liplt")
    ang = torch.linspace(0, 2 * math.pi, 361)[:-1]
    rad = torch.linspace(0, 1, 21)
    disc = torch.stack([torch.outer(rad, ang.cos()), torch.outer(rad, ang.sin())], -1).reshape(-1, 1, 2)
    checked = 0
    for i in range(60):
        r = float(cert.radius[i])
        if r <= 0:
            continue
        pts = x[i] + r * disc
        with torch.no_grad():
            assert (model(pts).argmax(1) == y[i]).all()
        checked += 1
    assert checked >= 20


def test_liplt_radii_dominate_naive():
    model, x, y = CASES["conv"]
    nv, lt = certify(model, x, y, bound="naive"), certify(model, x, y, bound="liplt")
    assert (lt.radius >= nv.radius * (1 - 1e-9)).all()
    assert lt.radius.mean() > 1.2 * nv.radius.mean()
    glob = certify(model, x, y, bound="global")
    assert (nv.radius >= glob.radius * (1 - 1e-9)).all()  # ||w_i - w_j|| <= sqrt(2) ||W_L||
    best = certify(model, x, y, bound="best", eps=[0.05])
    assert (best.radius >= torch.maximum(lt.radius, glob.radius) - 1e-15).all() and best.bound == "upper"
    src = best.extra["bound_source"]
    assert (src[best.radius > 0] > 0).all()


def test_estimate_is_labelled():
    model, x, y = CASES["conv"]
    est = certify(model, x[:20], y[:20], bound="liplt-estimate")
    assert est.bound == "estimate" and est.method == "l2_pairwise_liplt_estimate"
    assert (est.extra["bound_source"][est.radius > 0] == 6).all()


def test_residual_best_uses_pairwise_only():
    model, x, y = CASES["residual"]
    best = certify(model, x[:30], y[:30], bound="best", eps=[0.1])
    lt = certify(model, x[:30], y[:30], bound="liplt")
    torch.testing.assert_close(best.radius, lt.radius)
    with pytest.raises(CertificationError, match="not supported"):
        certify(model, x[:5], y[:5], bound="global")


def test_errors():
    model, x, y = CASES["conv"]
    with pytest.raises(CertificationError, match="unknown pairwise bound"):
        pairwise_l2(model, x, y, bound="sdp")
    lin = build("linf_mlp", in_shape=[2, 8, 8], num_classes=4, width=8, depth=2)
    with pytest.raises(CertificationError, match="not an l2"):
        pairwise_l2(lin, x, y)


def _exact_forward(model, x):
    """The network in exact rational arithmetic (float64 constants taken as exact numbers)."""
    t_of = {id(st.module): st.G.t for st in as_ltnet(model).stages if st.G is not None}
    del t_of
    vals = [[Fraction(float(v)) for v in row] for row in x.reshape(x.shape[0], -1).double()]
    out = []
    for v in vals:
        h = v
        for child in model.children():
            if isinstance(child, InputNormalize):
                m, s = Fraction(float(child.mean.double()[0])), Fraction(float(child.std.double()[0]))
                h = [(a - m) / s for a in h]
            elif isinstance(child, Flatten):
                pass
            elif isinstance(child, nn.Linear):
                w, b = child.weight.double().tolist(), child.bias.double().tolist()
                h = [sum(Fraction(wi) * a for wi, a in zip(row, h)) + Fraction(bi) for row, bi in zip(w, b)]
            elif isinstance(child, ReLU):
                h = [max(a, Fraction(0)) for a in h]
            else:  # SqrtRhoResidual with its float64 constants
                t = child.t_diag().double().tolist()
                hh, gg = (float(c) for c in child.coefficients())
                w, b = child.weight.double().tolist(), child.bias.double().tolist()
                z = [max(sum(Fraction(wi) * a for wi, a in zip(row, h)) + Fraction(bi), Fraction(0)) for row, bi in zip(w, b)]
                q = [zi * Fraction(ti) for zi, ti in zip(z, t)]
                r = [sum(Fraction(w[i][j]) * q[i] for i in range(len(q))) for j in range(len(h))]
                h = [Fraction(hh) * a - Fraction(gg) * rj for a, rj in zip(h, r)]
        out.append(h)
    return out


def test_rounding_bound_against_exact_arithmetic():
    torch.manual_seed(5)
    model = build("resmlp_l2", in_shape=(1, 2, 3), num_classes=3, width=5, depth=2, mean=(0.3,), std=0.7).double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(6, 1, 2, 3, dtype=torch.float64)
    net = as_ltnet(model, dtype=None)
    logits, err = forward_with_error(net, model, x)
    exact = _exact_forward(model, x)
    for n in range(x.shape[0]):
        for k in range(3):
            assert abs(Fraction(float(logits[n, k])) - exact[n][k]) <= Fraction(float(err[n, k]))
    assert float(err.max()) < 1e-12


def test_one_hidden_layer_maxmin_certificate_is_sound():
    """Regression: the Thm 3.2 (AOL) refinement was applied to MaxMin (not elementwise) and certified
    radius 5 where a point at distance 0.6 changes the class."""
    lin0, lin1 = nn.Linear(2, 2, bias=False), nn.Linear(2, 2)
    with torch.no_grad():
        lin0.weight.copy_(torch.tensor([[0.1, 0.0], [1.0, 0.0]]))
        lin1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        lin1.bias.copy_(torch.tensor([0.0, 0.5]))
    from lipcert.nn.activations import MaxMin

    model = MCNF(Flatten(), lin0, MaxMin(), lin1, in_shape=(2,)).eval()
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    flip = torch.tensor([[0.4, 0.0]])
    assert int(model(flip).argmax(1)) == 1
    for bound in ("liplt", "best"):
        cert = certify(model, x, y, bound=bound, **({"eps": [1.0]} if bound == "best" else {}))
        assert float(cert.radius[0]) < 0.6, bound
