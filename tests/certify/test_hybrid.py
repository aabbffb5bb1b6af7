"""Hybrid "l-inf-dist Net + MLP" certificate: brute-force interval checks on tiny heads, PGD on a
trained hybrid, bisection returns verified radii, float rounding accounted for."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lipcert import certify, models
from lipcert.attacks import pgd
from lipcert.certify import CertificationError
from lipcert.bounds.hybrid_head import head_bounds, head_ops
from lipcert.certify.hybrid import HybridBounds
from lipcert.nn import ScaledLinear
from tests.linf_family_helpers import trained_tiny


def _tiny_head(seed=0, hidden=4, k=3, d=3, act=nn.Tanh):
    torch.manual_seed(seed)
    layers = [ScaledLinear(d, hidden), act(), nn.Linear(hidden, k)] if hidden else [nn.Linear(d, k)]
    head = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in head.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_()
    return head


def _ibp_reference(head, lo, hi, y):
    """Independent plain interval arithmetic (per-neuron loops, center/radius form) + row differences."""
    mods = list(head.children())
    for m in mods[:-1]:
        if isinstance(m, (nn.Linear, ScaledLinear)):
            w = m.weight.detach() * (m.scale if isinstance(m, ScaledLinear) else 1.0)
            c, r = (lo + hi) / 2, (hi - lo) / 2
            mid = torch.stack([sum(w[o, i] * c[i] for i in range(len(c))) + m.bias[o].detach() for o in range(w.shape[0])])
            rad = torch.stack([sum(abs(w[o, i]) * r[i] for i in range(len(c))) for o in range(w.shape[0])])
            lo, hi = mid - rad, mid + rad
        else:
            lo, hi = m(lo), m(hi)
    last = mods[-1]
    w = last.weight.detach() * (last.scale if isinstance(last, ScaledLinear) else 1.0)
    b = last.bias.detach()
    out = []
    for j in range(w.shape[0]):
        dvec = w[y] - w[j]
        out.append(sum(min(dvec[i] * lo[i], dvec[i] * hi[i]) for i in range(len(lo))) + b[y] - b[j])
    return torch.stack(out)


def _brute_min(head, lo, hi, y, samples=4000):
    """Min of z_y - z_j over the box's vertices and random points (an upper bound of the true min)."""
    d = lo.numel()
    verts = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)
    pts = torch.cat([verts, torch.rand(samples, d, dtype=torch.float64)])
    h = lo + (hi - lo) * pts
    z = head(h)
    return (z[:, y : y + 1] - z).amin(0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_tiny_head_against_brute_force_and_reference(seed, act):
    head = _tiny_head(seed, act=act)
    f = torch.randn(1, 3, dtype=torch.float64)
    rho = torch.tensor([0.3], dtype=torch.float64)
    with torch.no_grad():
        y = int(head(f).argmax(1))
        lower, mag = head_bounds(head_ops(head), f, rho, torch.tensor([y]), sound=True)
        lower = lower[0]
        ref = _ibp_reference(head, f[0] - rho, f[0] + rho, y)
        brute = _brute_min(head, f[0] - rho, f[0] + rho, y)
        z_all = head(f[0] - rho + 2 * rho * torch.rand(500, 3, dtype=torch.float64))
    others = [j for j in range(3) if j != y]
    assert math.isinf(float(lower[y]))
    for j in others:
        assert lower[j] <= brute[j]  # sound
        assert lower[j] <= ref[j] and ref[j] - lower[j] < 1e-5  # plain IBP minus the (float32-inference) rounding slack
    assert (z_all.abs().amax(1) <= mag).all()


def test_linear_head_bound_is_exact_at_a_vertex():
    head = _tiny_head(3, hidden=0, k=4, d=5)
    f = torch.randn(1, 5, dtype=torch.float64)
    rho = torch.tensor([0.2], dtype=torch.float64)
    with torch.no_grad():
        y = int(head(f).argmax(1))
        lower, _ = head_bounds(head_ops(head), f, rho, torch.tensor([y]))
        brute = _brute_min(head, f[0] - rho, f[0] + rho, y, samples=0)  # all 32 vertices: the exact min of a linear map
    for j in range(4):
        if j != y:
            assert lower[0, j] <= brute[j] and brute[j] - lower[0, j] < 1e-5


def test_row_differences_tighter_than_separate_logit_bounds():
    head = _tiny_head(1, hidden=8, k=5, d=6)
    f = torch.randn(4, 6, dtype=torch.float64)
    rho = torch.full((4,), 0.2, dtype=torch.float64)
    with torch.no_grad():
        y = head(f).argmax(1)
        lower, _ = head_bounds(head_ops(head), f, rho, y)
        # naive: lower(z_y) - upper(z_j) from a box over the logits
        ops = head_ops(head)
        from lipcert.bounds.hybrid_head import _linear_box

        lo, hi = f - rho[:, None], f + rho[:, None]
        lo, hi = _linear_box(ops[0], lo, hi, False)
        lo, hi = torch.tanh(lo), torch.tanh(hi)
        zl, zh = _linear_box(ops[2], lo, hi, False)
        naive = zl.gather(1, y[:, None]) - zh
    mask = torch.ones_like(lower, dtype=torch.bool).scatter(1, y[:, None], False)
    assert (lower[mask] >= naive[mask] - 1e-9).all()
    assert (lower[mask] > naive[mask] + 1e-6).any()


def test_pgd_never_breaks_trained_hybrid():
    model, x, y = trained_tiny("hybrid")
    cert = certify.certify(model, x, y, method="lipschitz")
    assert cert.method == "hybrid_interval"
    ok = cert.radius > 0
    assert ok.sum() > 30
    xs, ys, radii = x[ok], y[ok], cert.radius[ok]
    for q in (0.2, 0.8):
        r = float(torch.quantile(radii, q))
        sel = radii >= r
        att = pgd(model, xs[sel], ys[sel], eps=r, steps=30, restarts=2, step_size=r / 8)
        assert att.robust.all(), f"PGD broke a hybrid sample certified at >= {r}"


def test_bisection_reports_verified_radii():
    model, x, y = trained_tiny("hybrid")
    cert = certify.hybrid(model, x, y, tol=1e-4)
    b = HybridBounds(model)
    fx = b.prepare(x)
    ok = cert.radius > 0
    lower, _ = b.lower_bounds(fx, y, cert.radius.double())
    assert (lower[ok] > 0).all()  # certified exactly at the reported radius
    above = (cert.radius.double() + 2e-4).clamp_max(1.0)
    lower_above, _ = b.lower_bounds(fx, y, above)
    not_cap = ok & (cert.radius < 1.0)
    assert not ((lower_above[not_cap] > 0).all(1)).all()  # and the bracket is tight: some fail just above
    assert (cert.radius[~ok] == 0).all()
    assert (cert.radius[cert.prediction != cert.label] == 0).all()


def test_feature_rounding_is_accounted_and_small():
    model, x, y = trained_tiny("hybrid")
    cert = certify.hybrid(model, x, y)
    assert (cert.extra["feature_rounding"] > 0).all() and (cert.extra["feature_rounding"] < 1e-4).all()
    assert cert.radius.max() <= 1.0  # the search range is [0, 1] (all of the pixel range)


def test_differentiable_bound_matches_sound_bound():
    model, x, y = trained_tiny("hybrid")
    f = model.backbone(x[:16]).flatten(1).double()
    rho = torch.full((16,), 0.1, dtype=torch.float64)
    sound, _ = head_bounds(head_ops(model.head), f, rho, y[:16], sound=True)
    head64 = model.head.double()
    try:
        loose, _ = head_bounds(head_ops(head64, dtype=None), f, rho, y[:16], sound=False)
    finally:
        model.head.float()
    assert loose.requires_grad
    mask = torch.isfinite(sound)
    assert (sound[mask] <= loose.detach()[mask]).all() and (loose.detach()[mask] - sound[mask] < 1e-4).all()


def test_unsupported_head_is_refused():
    backbone = models.build("linf_mlp_hybrid", in_shape=[1, 2, 2], num_classes=3, width=4, depth=1, head_hidden=4)
    backbone.head = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 3))
    with pytest.raises(CertificationError, match="Sigmoid"):
        certify.certify(backbone, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))
