"""The BCP certificate at fixed eps (Huang21 App. B): its margin bound against an exact minimum,
attacks at eps on what it certifies, never worse than the Lipschitz-margin certificate, refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from lipcert import certify
from lipcert.attacks import pgd
from lipcert.bounds.analysis import L2Bounds
from lipcert.bounds.ball_sound import sound_margin_lower_bounds
from lipcert.certify import CertificationError
from lipcert.certify.bcp import bcp_margins
from lipcert.certify.result import SOURCE_CODES
from lipcert.models.mcnf import build_mcnf
from lipcert.nn import InputNormalize
from tests.bounds.nets import IN_SHAPE, ball_points, tiny_mcnf, train_l2_briefly
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)
from tests.conftest import tiny_linf_net
from tests.soundness.zoo import base, digits

EPS = [0.1, 0.3]


# ----------------------------------------------------------------- (a) the bound vs an exact minimum
def _exact_min(a: list[float], d: float, c: list[float], r: float, lo: list[float], hi: list[float]) -> float:
    """min of a.h + d over {lo <= h <= hi, ||h - c|| <= r} by enumerating active sets (KKT): each
    coordinate at lo, at hi or free; free coordinates on the sphere, c_F - s a_F / ||a_F||."""
    n = len(a)
    best = math.inf
    for assign in itertools.product((0, 1, 2), repeat=n):
        h = [lo[j] if s == 1 else hi[j] if s == 2 else c[j] for j, s in enumerate(assign)]
        free = [j for j, s in enumerate(assign) if s == 0]
        s2 = r * r - sum((h[j] - c[j]) ** 2 for j in range(n) if assign[j] != 0)
        if s2 < 0:
            continue
        na = math.sqrt(sum(a[j] ** 2 for j in free))
        if na > 0:
            for j in free:
                h[j] = c[j] - math.sqrt(s2) * a[j] / na
        if any(h[j] < lo[j] - 1e-12 or h[j] > hi[j] + 1e-12 for j in range(n)):
            continue
        best = min(best, sum(a[j] * h[j] for j in range(n)) + d)
    return best


def _instance(g: torch.Generator, n: int, k: int = 4, b: int = 6):
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    bias = torch.randn(k, generator=g, dtype=torch.float64) * 0.3
    c = torch.rand(b, n, generator=g, dtype=torch.float64)
    lo = c - torch.rand(b, n, generator=g, dtype=torch.float64) * 0.5
    hi = c + torch.rand(b, n, generator=g, dtype=torch.float64) * 0.5
    dead = torch.rand(b, n, generator=g) < 0.2  # degenerate coordinates (dead / saturated neurons)
    lo, hi = torch.where(dead, c, lo), torch.where(dead, c, hi)
    rho = torch.rand(b, generator=g, dtype=torch.float64) * 0.6 + 0.05
    y = torch.randint(0, k, (b,), generator=g)
    return w, bias, y, c, rho, lo, hi


@pytest.mark.parametrize("n", [2, 3, 5])
def test_bound_is_below_and_close_to_the_exact_minimum(n):
    g = torch.Generator().manual_seed(n)
    gaps, box_or_ball_looser = [], 0
    for _ in range(8):
        w, bias, y, c, rho, lo, hi = _instance(g, n)
        res = sound_margin_lower_bounds(w, bias, y, c, rho, lo, hi)
        for s in range(c.shape[0]):
            for i in range(w.shape[0]):
                if i == int(y[s]):
                    assert math.isinf(res["bound"][s, i]) and res["bound"][s, i] > 0
                    continue
                a = (w[y[s]] - w[i]).tolist()
                exact = _exact_min(a, float(bias[y[s]] - bias[i]), c[s].tolist(), float(rho[s]), lo[s].tolist(),
                                   hi[s].tolist())
                scale = 1 + abs(exact) + math.sqrt(sum(v * v for v in a))
                got = float(res["bound"][s, i])
                assert got <= exact + 1e-13 * scale, (got, exact)  # a lower bound
                for part in ("box", "ball", "dual"):
                    assert float(res[part][s, i]) <= exact + 1e-13 * scale
                gaps.append((exact - got) / scale)
                box_or_ball_looser += max(float(res["box"][s, i]), float(res["ball"][s, i])) < got - 1e-6 * scale
    assert max(gaps) < 1e-6, f"the dual bound should reach the minimum (strong duality); worst gap {max(gaps):.2e}"
    assert box_or_ball_looser > 0, "no instance where the intersection beats both the box and the ball alone"


def test_center_error_and_formed_weights_only_lower_the_bound():
    g = torch.Generator().manual_seed(11)
    w, bias, y, c, rho, lo, hi = _instance(g, 3)
    plain = sound_margin_lower_bounds(w, bias, y, c, rho, lo, hi)["bound"]
    err = torch.full_like(rho, 0.05)
    with_err = sound_margin_lower_bounds(w, bias, y, c, rho, lo, hi, center_error=err)["bound"]
    formed = sound_margin_lower_bounds(w, bias, y, c, rho, lo, hi, weight_ops=50)["bound"]
    finite = torch.isfinite(plain)
    assert (with_err[finite] <= plain[finite]).all() and (formed[finite] <= plain[finite]).all()
    # the bound with a centre error holds for every true centre within it (inside the box)
    for _ in range(20):
        shift = torch.randn_like(c, dtype=torch.float64)
        cs = (c + shift / shift.norm(dim=1, keepdim=True) * err[:, None] * torch.rand(c.shape[0], 1, generator=g, dtype=torch.float64)).clamp(lo, hi)
        for s in range(c.shape[0]):
            for i in range(w.shape[0]):
                if i != int(y[s]):
                    exact = _exact_min((w[y[s]] - w[i]).tolist(), float(bias[y[s]] - bias[i]), cs[s].tolist(),
                                       float(rho[s]), lo[s].tolist(), hi[s].tolist())
                    assert float(with_err[s, i]) <= exact + 1e-12


@pytest.fixture(scope="module")
def net_3d():
    """A random ReLU net on [0, 1]^4 with a 3-dimensional last hidden layer (plain torch, read as l2)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 3)).double().eval()
    with torch.no_grad():
        net[2].bias.add_(0.5)  # most features alive
    x = torch.rand(12, 4, dtype=torch.float64) * 0.8 + 0.1
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def test_network_margin_bound_holds_for_every_sampled_input(net_3d):
    """On a 3-d feature net: the bound <= the margin of every sampled / attacked input in the ball
    within [0, 1], and those inputs' features lie in the set the bound is about."""
    net, x, y = net_3d
    an = L2Bounds(net, in_shape=(4,))
    eps = 0.3
    m = bcp_margins(an, x, y, eps)
    low = m["bound"]
    pts = ball_points(x, eps, 4000, generator=torch.Generator().manual_seed(0)).clamp(0, 1)  # clipping stays in the ball
    with torch.no_grad():
        z = torch.stack([net(p) for p in pts])  # (P, B, K)
    margins = z.gather(2, y.view(1, -1, 1).expand(z.shape[0], -1, 1)) - z  # (P, B, K)
    finite = torch.isfinite(low)
    assert (margins.amin(0)[finite] >= low[finite]).all()
    # a gradient attack on each class margin inside ball and [0, 1]
    for i in range(3):
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(60):
            out = net(x + delta)
            marg = out.gather(1, y[:, None])[:, 0] - out[:, i]
            (gd,) = torch.autograd.grad(marg.sum(), delta)
            with torch.no_grad():
                step = delta - 0.05 * gd / gd.norm(dim=1, keepdim=True).clamp_min(1e-12)
                step = step * (eps / step.norm(dim=1, keepdim=True).clamp_min(eps))  # into the ball
                delta = ((x + step).clamp(0, 1) - x).requires_grad_(True)
        with torch.no_grad():
            out = net(x + delta)
            marg = out.gather(1, y[:, None])[:, 0] - out[:, i]
        sel = y != i
        assert (marg[sel] >= low[sel, i]).all()


# ---------------------------------------------------------- (b), (c) trained digits models
@pytest.fixture(scope="module")
def trained_digits():
    """4C3F at 1/8 width, a few Local-Lip-G (GloRo + box) steps on digits."""
    x, y = digits()
    torch.manual_seed(0)
    model = build_mcnf("4c3f", IN_SHAPE, 10, "relu_theta", 1.0, 0.125, mean=[0.3], std=0.4).eval()
    model = train_l2_briefly(model, x[:300], y[:300], steps=40, eps=0.3, lr=5e-3)
    xt, yt = digits("test", 200)
    return model, xt, yt


@pytest.fixture(scope="module")
def mlp_digits():
    """A one-hidden-layer ReLU MLP (plain torch) trained the same way: its box is tight enough that
    BCP certifies samples the Lipschitz margin does not."""
    x, y = digits()
    torch.manual_seed(0)
    model = nn.Sequential(InputNormalize([0.3], 0.4), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model.in_shape = IN_SHAPE
    model = train_l2_briefly(model, x, y, steps=60, eps=0.5, lr=1e-2)
    xt, yt = digits("test", 200)
    return model, xt, yt


@pytest.mark.parametrize("which", ["conv", "mlp"])
def test_pgd_at_eps_never_flips_a_bcp_certified_sample(which, trained_digits, mlp_digits):
    model, x, y = trained_digits if which == "conv" else mlp_digits
    eps = EPS if which == "conv" else [0.25, 0.5]
    cert = certify.certify(model, x, y, norm="l2", bound="bcp", eps=eps)
    assert cert.method == "l2_bcp" and cert.bound == "upper"
    n_cert = n_box = 0
    for e in eps:
        sel = cert.certified(e)
        by = cert.extra[f"certified_by@{e:.6g}"]
        assert ((by > 0) == sel).all()  # every certified sample names its certificate, and only those
        n_cert += int(sel.sum())
        box = by == SOURCE_CODES["bcp"]
        n_box += int(box.sum())
        if sel.any():
            att = pgd(model, x[sel], y[sel], e, norm="l2", steps=50, restarts=3, step_size=e / 8)
            assert att.robust.all(), f"PGD broke {int((~att.robust).sum())} samples BCP certified at eps={e}"
            pts = ball_points(x[sel], e, 64, generator=torch.Generator().manual_seed(1)).clamp(0, 1)
            with torch.no_grad():
                assert all((model(p).argmax(1) == y[sel]).all() for p in pts)
        if box.any():  # harder on the samples only the box certifies
            att = pgd(model, x[box], y[box], e, norm="l2", steps=200, restarts=10, step_size=e / 10)
            assert att.robust.all()
    assert n_cert >= 10, "too few certified samples for the test to mean anything"
    if which == "mlp":
        assert n_box > 0, "no sample certified only with the box: the attack would not test it"


@pytest.mark.parametrize("which", ["conv", "mlp"])
def test_never_worse_than_the_lipschitz_margin_certificate(which, trained_digits, mlp_digits):
    model, x, y = trained_digits if which == "conv" else mlp_digits
    ball = certify.certify(model, x, y, norm="l2", bound="local-upper", eps=EPS)
    bcp = certify.certify(model, x, y, norm="l2", bound="bcp", eps=EPS)
    for e in EPS:
        assert (bcp.certified(e) | ~ball.certified(e)).all()
        assert bcp.certified_accuracy(e) >= ball.certified_accuracy(e)
    assert (bcp.radius >= ball.radius).all() and torch.equal(bcp.extra["radius_lipschitz"], ball.radius)
    # the margin bound itself never falls below the ball bound (the dual includes it)
    an = L2Bounds(model, in_shape=IN_SHAPE)
    x64 = x.double()
    ok = model(x).argmax(1) == y
    m = bcp_margins(an, x64[ok], y[ok], 0.2)
    fin = torch.isfinite(m["ball"])
    assert (m["bound"][fin] >= m["ball"][fin]).all() and (m["bound"][fin] >= m["box"][fin]).all()


def test_the_box_certifies_where_the_ball_cannot():
    """At the corner x = 0 of the pixel range the clipped box is a quarter of the ball's box: the
    margin 0.01 + h_0 + h_1 of h = relu(x) is >= 0.01 on it, while the ball alone allows
    0.01 - sqrt(2) eps."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.01, 0.0]))
    x = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    ball = certify.certify(net, x, y, norm="l2", bound="local-upper", eps=[0.5])
    bcp = certify.certify(net, x, y, norm="l2", bound="bcp", eps=[0.5])
    assert not ball.certified(0.5).any() and bcp.certified(0.5).all()
    assert int(bcp.extra["bound_source"][0]) == SOURCE_CODES["bcp"]
    assert int(bcp.extra["certified_by@0.5"][0]) == SOURCE_CODES["bcp"]
    assert float(bcp.radius[0]) > 0.5


def test_radius_is_the_largest_certified_eps(trained_digits):
    model, x, y = trained_digits
    eps = [0.05, 0.1, 0.2, 0.3]
    cert = certify.certify(model, x, y, bound="bcp", eps=eps)
    bcp_only = cert.extra["bound_source"] == SOURCE_CODES["bcp"]
    for r, lip in zip(cert.radius[bcp_only].tolist(), cert.extra["radius_lipschitz"][bcp_only].tolist()):
        assert any(abs(r - (e * (1 + 1e-6) + 1e-12)) < 1e-15 for e in eps) and r > lip


# ----------------------------------------------------------------------------------- (d) refusals
def test_refuses_what_it_cannot_certify():
    x, y = digits("test", 8)
    model = tiny_mcnf("relu_theta", seed=0)
    with pytest.raises(CertificationError, match="fixed radii"):
        certify.certify(model, x, y, bound="bcp")
    with pytest.raises(CertificationError, match="pixel range"):
        certify.certify(model, x * 2 - 0.5, y, bound="bcp", eps=[0.1])
    with pytest.raises(CertificationError, match="needs a chain"):
        certify.certify(base("l2_res"), x, y, bound="bcp", eps=[0.1])  # residual layers (Fazlyab23)
    two_linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 10))
    with pytest.raises(CertificationError, match="needs a chain"):
        certify.certify(two_linear, x, y, norm="l2", bound="bcp", eps=[0.1])
    with pytest.raises(CertificationError, match="hidden layer"):
        certify.certify(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x, y, norm="l2", bound="bcp", eps=[0.1])
    with pytest.raises(CertificationError, match="not an l2"):
        certify.lipschitz_l2(tiny_linf_net(), torch.rand(4, 1, 6, 6), torch.zeros(4, dtype=torch.long))
    assert "bcp" in certify.bound_names("l2_lipschitz")
