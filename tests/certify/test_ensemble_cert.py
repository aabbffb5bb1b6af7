"""Ensemble certificate (EMAReport §2.4): averaged logits of 1-Lipschitz members by the margin, mixed
with hybrids by averaged interval bounds; never broken by PGD."""

from __future__ import annotations

import copy

import pytest
import torch

from lipcert import certify, models
from lipcert.attacks import pgd
from lipcert.certify import CertificationError
from lipcert.certify.ensemble import _MarginMember, _mixed_batch
from lipcert.models import LinfEnsemble
from tests.linf_family_helpers import blobs, linf_ratio, train_model_briefly, trained_tiny


def _three_members():
    x, y = blobs(120, seed=1)
    nets = []
    for seed in range(3):
        torch.manual_seed(10 + seed)
        net = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=24, depth=3, mean=[0.5], std=0.25)
        nets.append(train_model_briefly(net, x, y, steps=30, seed=seed))
    return nets, x, y


_MEMBERS = {}


def members():
    if "m" not in _MEMBERS:
        _MEMBERS["m"] = _three_members()
    return _MEMBERS["m"]


def test_copies_of_one_net_certify_like_the_net():
    net, x, y = trained_tiny("mlp")
    ens = LinfEnsemble([copy.deepcopy(net) for _ in range(3)])
    single = certify.margin(net, x, y)
    both = certify.certify(ens, x, y, method="margin")
    assert both.method == "ensemble_margin"
    assert certify.certify(ens, x, y).method == "ensemble_margin+interval"  # the default: the best sound one
    assert (both.radius <= single.radius).all()  # extra averaging slack only
    torch.testing.assert_close(both.radius, single.radius, rtol=1e-5, atol=1e-6)


def test_ensemble_is_lipschitz_with_mean_constant():
    nets, x, _ = members()
    ens = LinfEnsemble(nets).double()
    a = x.double()
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    assert (linf_ratio(ens, a, b) <= 4.0 * (1 + 1e-12)).all()  # 1 / std


def test_pgd_never_breaks_ensemble_radius():
    nets, x, y = members()
    ens = LinfEnsemble(nets)
    cert = certify.certify(ens, x, y)
    ok = cert.radius > 0
    assert ok.sum() > 30
    for q in (0.3, 0.8):
        r = float(torch.quantile(cert.radius[ok], q))
        sel = cert.radius >= r
        att = pgd(ens, x[sel], y[sel], eps=r, steps=25, restarts=2, step_size=r / 8)
        assert att.robust.all()


def test_bisection_path_agrees_with_closed_form():
    nets, x, y = members()
    ens = LinfEnsemble(nets)
    closed = certify.certify(ens, x, y, method="margin")
    nets64 = [copy.deepcopy(n).double().eval() for n in nets]
    r, _ = _mixed_batch([_MarginMember(n) for n in nets64], nets64, x.double(), y, tol=1e-6)
    assert (r <= closed.radius + 2e-6).all()
    torch.testing.assert_close(r, closed.radius, rtol=0, atol=5e-6)


def test_mixed_ensemble_with_hybrid_member_is_sound():
    hybrid, x, y = trained_tiny("hybrid")
    net, _, _ = trained_tiny("mlp")  # same blobs(120, seed=1) data
    ens = LinfEnsemble([hybrid, net])
    cert = certify.certify(ens, x, y, method="margin")
    assert cert.method == "ensemble_interval"
    ok = cert.radius > 0
    assert ok.sum() > 30
    for q in (0.2, 0.8):
        r = float(torch.quantile(cert.radius[ok], q))
        sel = cert.radius >= r
        att = pgd(ens, x[sel], y[sel], eps=r, steps=25, restarts=2, step_size=r / 8)
        assert att.robust.all()


def test_factory_builds_independent_members_and_checkpoint_spec():
    torch.manual_seed(0)
    ens = models.build("linf_ensemble", member={"name": "linf_mlp", "width": 8, "depth": 2}, n=3,
                       in_shape=[1, 2, 2], num_classes=3, mean=[0.5], std=0.5)
    assert len(ens.members) == 3
    assert not torch.equal(ens.members[0][2].weight, ens.members[1][2].weight)
    assert ens.members[0][0].std.item() == 0.5
    x = torch.rand(5, 1, 2, 2)
    torch.testing.assert_close(ens(x), torch.stack([m(x) for m in ens.members]).mean(0))
    rebuilt = models.build(ens.lipcert_spec["name"], **ens.lipcert_spec["kwargs"])
    rebuilt.load_state_dict(ens.state_dict())
    torch.testing.assert_close(rebuilt(x), ens(x))
    with pytest.raises(ValueError, match="exactly one"):
        models.build("linf_ensemble")
    # losses convert raw-unit thresholds with the nominal constant: the members' 1 / std
    from lipcert.train.objectives import logit_scale

    assert logit_scale(ens) == pytest.approx(2.0)


def test_refuses_unknown_members():
    ens = LinfEnsemble([torch.nn.Linear(4, 3)])
    with pytest.raises(CertificationError, match="certificate None"):
        certify.certify(ens, torch.rand(2, 4), torch.zeros(2, dtype=torch.long))


def test_best_ensemble_certificate_is_larger_and_sound():
    nets, x, y = members()
    ens = LinfEnsemble(nets)
    base = certify.certify(ens, x, y, method="margin")
    best = certify.certify(ens, x, y, method="best")
    assert best.method == "ensemble_margin+interval"
    torch.testing.assert_close(best.extra["margin_radius"], base.radius)
    assert (best.radius >= base.radius).all()
    ok = best.radius > 0
    for q in (0.3, 0.8):
        r = float(torch.quantile(best.radius[ok], q))
        sel = best.radius >= r
        att = pgd(ens, x[sel], y[sel], eps=r, steps=25, restarts=2, step_size=r / 8)
        assert att.robust.all()
