"""Margin certificate (Zhang21 Fact 3.2): soundness against attacks, exact arithmetic, clear refusals."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lipcert import certify
from lipcert.attacks import pgd
from lipcert.certify import CertificationError
from lipcert.nn import set_p
from tests.conftest import blobs, tiny_linf_net


def _random_net(seed=0):
    torch.manual_seed(seed)
    net = tiny_linf_net(width=24, depth=3).eval()
    # spread running means so the eval-mode shift matters
    for m in net.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.normal_()
    return net


@pytest.mark.parametrize("which", ["random", "trained"])
def test_pgd_at_certified_radius_never_flips(which, trained_linf_net):
    if which == "trained":
        net, x, y = trained_linf_net
    else:
        net = _random_net()
        x, _ = blobs(120)
        y = net(x).argmax(1)  # every sample correct: all have a positive radius
    cert = certify.margin(net, x, y)
    certified = cert.radius > 0
    assert certified.sum() >= 10
    xs, ys, radii = x[certified], y[certified], cert.radius[certified]
    # attack each sample at exactly its own radius (per-sample eps via a loop over a few buckets)
    for r in torch.quantile(radii, torch.tensor([0.1, 0.5, 0.9], dtype=radii.dtype)).tolist():
        sel = radii >= r
        att = pgd(net, xs[sel], ys[sel], eps=r, steps=40, restarts=3, step_size=r / 8)
        assert att.robust.all(), f"PGD broke a sample certified at radius >= {r}"


def test_radius_is_tight_lipschitz_argument(trained_linf_net):
    """Moving by the certified radius along the worst direction can change the margin by at most 2 L r,
    and the certificate uses exactly margin / (2 L): the radius equals margin * std / 2 up to slack."""
    net, x, y = trained_linf_net
    cert = certify.margin(net, x, y)
    ok = cert.prediction == cert.label
    expected = (cert.extra["margin"][ok] * 0.25 / 2).clamp_min(0)
    assert (cert.radius[ok] <= expected).all()
    torch.testing.assert_close(cert.radius[ok], expected, rtol=1e-4, atol=1e-6)
    assert (cert.radius[~ok] == 0).all()


def test_one_lipschitz_in_raw_units_on_random_pairs(trained_linf_net):
    net, x, _ = trained_linf_net
    net = net.double()
    try:
        a = x.double()
        b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
        lhs = (net(a) - net(b)).abs().amax(1)
        rhs = (a - b).flatten(1).abs().amax(1) * net.linf_lipschitz()
        assert (lhs <= rhs * (1 + 1e-12)).all()
        assert net.linf_lipschitz() == pytest.approx(4.0)  # 1 / std
    finally:
        net.float()


def _exact_forward(net, x_row):
    """The network in exact rational arithmetic on its float32 weights."""
    from lipcert.nn import Flatten, InputNormalize, LinfDistLinear, MeanShiftNorm, Negate

    h = [Fraction(float(v)) for v in x_row.flatten().tolist()]
    for layer in net:
        if isinstance(layer, InputNormalize):
            m, s = Fraction(float(layer.mean[0])), Fraction(float(layer.std[0]))
            h = [(v - m) / s for v in h]
        elif isinstance(layer, Flatten):
            pass
        elif isinstance(layer, LinfDistLinear):
            W = [[Fraction(float(v)) for v in row] for row in layer.weight.detach().tolist()]
            b = [Fraction(float(v)) for v in layer.bias.detach().tolist()] if layer.bias is not None else [Fraction(0)] * len(W)
            h = [max(abs(hi - wi) for hi, wi in zip(h, row)) + bj for row, bj in zip(W, b)]
        elif isinstance(layer, MeanShiftNorm):
            h = [v - Fraction(float(mu)) for v, mu in zip(h, layer.running_mean.tolist())]
        elif isinstance(layer, Negate):
            h = [-v for v in h]
        else:  # pragma: no cover
            raise TypeError(layer)
    return h


def test_radius_never_exceeds_exact_rational_radius():
    torch.manual_seed(3)
    net = tiny_linf_net(width=6, depth=3, in_shape=(1, 2, 2), num_classes=3).eval()
    for m in net.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.uniform_(-1, 1)
    x = torch.rand(25, 1, 2, 2)
    y = net(x).argmax(1)
    cert = certify.margin(net, x, y)
    std = Fraction(float(net[0].std[0]))
    for i in range(len(y)):
        z = _exact_forward(net, x[i])
        others = [v for j, v in enumerate(z) if j != int(y[i])]
        exact_radius = max(Fraction(0), (z[int(y[i])] - max(others)) * std / 2)
        r = Fraction(float(cert.radius[i]))
        assert r <= exact_radius
        assert float(r) >= float(exact_radius) - 1e-4  # slack is tiny


def test_margin_below_rounding_slack_is_not_certified():
    """A sample whose float32 logits tie up to rounding must not get a positive radius."""
    torch.manual_seed(0)
    net = tiny_linf_net(width=4, depth=2, in_shape=(1, 1, 2), num_classes=2).eval()
    last = net[4]
    with torch.no_grad():
        last.weight.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.0], [0.3, -0.2, 0.1, 0.0]]))
        last.bias.copy_(torch.tensor([0.0, 1e-9]))  # logits differ by far less than float32 resolution
    x = torch.rand(5, 1, 1, 2)
    y = torch.zeros(5, dtype=torch.long)
    cert = certify.margin(net, x, y)
    assert (cert.radius == 0).all()
    assert (cert.extra["rounding_slack"] > 0).all()


def test_refuses_lp_mode_and_bad_inputs():
    net = _random_net()
    x, y = blobs(8)
    set_p(net, 8.0)
    with pytest.raises(CertificationError, match="p = 8"):
        certify.margin(net, x, y)
    set_p(net, math.inf)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CertificationError, match="NaN"):
        certify.margin(net, bad, y)
    with pytest.raises(CertificationError, match="expected x"):
        certify.margin(net, x, y[:3])
    with pytest.raises(CertificationError, match="could not be evaluated"):
        certify.margin(net, torch.rand(8, 1, 5, 5), y)
    with pytest.raises(CertificationError, match=">= 0"):
        certify.margin(net, x, y - 1 - y.max())
    with pytest.raises(CertificationError, match="integers"):
        certify.margin(net, x, y.float())


def test_certify_dispatch_rejects_unknown_models():
    with pytest.raises(CertificationError, match="declares no certificate"):
        certify.certify(torch.nn.Linear(3, 2), torch.rand(2, 3), torch.zeros(2, dtype=torch.long))


def test_certified_is_strict_and_accuracy_counts():
    cert = certify.Certificate(
        radius=torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64), prediction=torch.tensor([1, 0, 0]),
        label=torch.tensor([0, 0, 0]), norm="linf", method="linf_margin",
    )
    assert cert.certified(0.1).tolist() == [False, False, True]
    assert cert.certified_accuracy(0.0) == pytest.approx(2 / 3)
    assert cert.clean_accuracy() == pytest.approx(2 / 3)
