"""Interval certificate for l-inf-dist nets: sound (samples, PGD), never looser than the margin,
tighter near the [0, 1] edges; `best` combines both."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert import certify, models
from lipcert.attacks import pgd
from lipcert.certify import CertificationError
from lipcert.certify.interval import input_box, propagate_box
from lipcert.nn import set_p
from tests.linf_family_helpers import blobs, trained_tiny


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_boxes_contain_sampled_and_float32_logits(kind):
    model, x, _ = trained_tiny(kind)
    layers = list(model.double().children())
    try:
        xs = x[:8].double()
        eps = torch.full((8,), 0.05, dtype=torch.float64)
        lo, hi = propagate_box(layers, *input_box(xs, eps))
        for _ in range(15):
            xp = (xs + (2 * torch.rand_like(xs) - 1) * 0.05).clamp(0, 1)
            z = model(xp)
            assert (z >= lo).all() and (z <= hi).all()
    finally:
        model.float()
    for _ in range(10):  # float32 inference of perturbed inputs stays inside the float64 boxes too
        xp = (x[:8] + (2 * torch.rand_like(x[:8]) - 1) * 0.05).clamp(0, 1)
        z = model(xp).double()
        assert (z >= lo).all() and (z <= hi).all()


@pytest.mark.parametrize("kind", ["mlp", "conv", "binary"])
def test_never_looser_than_margin(kind):
    model, x, y = trained_tiny(kind)
    m = certify.margin(model, x, y)
    iv = certify.interval(model, x, y, steps=10)
    assert (iv.radius >= m.radius * (1 - 2.0**-9)).all()  # bisection tolerance 2^-10 relative
    for eps in (0.02, 0.05, 0.1):
        grid = certify.interval(model, x, y, eps=[eps])
        assert (grid.certified(eps) >= m.certified(eps)).all()


def test_tighter_near_the_pixel_range_edges():
    """On {0, 1}-valued inputs clipping halves every box: the interval radius is about twice the margin's."""
    model, x, y = trained_tiny("binary")
    m = certify.margin(model, x, y)
    iv = certify.interval(model, x, y)
    ok = m.radius > 0
    assert ok.sum() > 30
    assert (iv.radius[ok] / m.radius[ok]).median() > 1.5


@pytest.mark.parametrize("kind", ["mlp", "binary"])
def test_pgd_never_breaks_interval_radius(kind):
    model, x, y = trained_tiny(kind)
    cert = certify.interval(model, x, y)
    ok = cert.radius > 0
    xs, ys, radii = x[ok], y[ok], cert.radius[ok]
    for q in (0.3, 0.8):
        r = float(torch.quantile(radii, q))
        sel = radii >= r
        att = pgd(model, xs[sel], ys[sel], eps=r, steps=25, restarts=2, step_size=r / 8)
        assert att.robust.all(), f"PGD broke a sample with interval radius >= {r}"


def test_best_takes_larger_radius_and_reports_both():
    model, x, y = trained_tiny("binary")
    b = certify.certify(model, x, y, method="best")
    assert b.method == "linf_margin+interval"
    assert b.bound == "upper"  # interval bounds: provable, not an exact Lipschitz constant
    torch.testing.assert_close(b.radius, torch.maximum(b.extra["margin_radius"], b.extra["interval_radius"]))
    assert (b.extra["interval_radius"] > b.extra["margin_radius"]).any()
    g = certify.certify(model, x, y, method="best", eps=[0.1, 0.2])
    for eps in (0.1, 0.2):
        assert g.certified_accuracy(eps) >= certify.margin(model, x, y).certified_accuracy(eps)
        assert g.certified_accuracy(eps) == pytest.approx(b.certified_accuracy(eps), abs=0.02)


def test_grid_radius_is_just_above_requested_eps():
    model, x, y = trained_tiny("mlp")
    g = certify.interval(model, x, y, eps=[0.05])
    assert set(torch.unique(g.radius).tolist()) <= {0.0, 0.05 * (1 + 2.0**-30)}
    assert g.certified(0.05).any()


def test_clear_refusals():
    model, x, y = trained_tiny("mlp")
    set_p(model, 8.0)
    try:
        with pytest.raises(CertificationError, match="p = 8"):
            certify.interval(model, x, y)
    finally:
        set_p(model, math.inf)
    hybrid = models.build("linf_mlp_hybrid", in_shape=[1, 6, 6], num_classes=4, width=8, depth=1, head_hidden=4)
    with pytest.raises(CertificationError, match="l-inf-dist chains"):
        certify.interval(hybrid, x[:4], y[:4])
    with pytest.raises(CertificationError, match="no certificate method"):
        certify.certify(model, x, y, method="nope")


def test_lse_model_margin_certificate_sound_during_training():
    """LSE-relaxed nets are 1-Lipschitz at finite p: the margin certificate applies as they are."""
    torch.manual_seed(0)
    x, y = blobs(100)
    model = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=24, depth=3, mean=[0.5], std=0.25, relaxation="lse")
    from tests.linf_family_helpers import train_model_briefly

    train_model_briefly(model, x, y, steps=30, p_schedule=(4.0, 4.0))
    set_p(model, 4.0)
    assert model.linf_lipschitz() == pytest.approx(4.0)  # 1 / std: no d^(L/p) factor
    cert = certify.certify(model, x, y)
    ok = cert.radius > 0
    assert ok.sum() > 25
    r = float(cert.radius[ok].median())
    sel = cert.radius >= r
    att = pgd(model, x[sel], y[sel], eps=r, steps=25, restarts=2, step_size=r / 8)
    assert att.robust.all()
