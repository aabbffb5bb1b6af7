"""Empirical Lipschitz estimate by PGD (Zhang22 App. C): a lower bound that reaches the true constant
on linear maps, stays below 1/std on l-inf-dist (and LSE) nets, and exceeds it on l_p-relaxed ones."""

from __future__ import annotations

import math

import torch

from lipcert import models
from lipcert.analysis import empirical_lipschitz
from lipcert.nn import set_p
from tests.linf_family_helpers import blobs, trained_tiny


def test_reaches_the_constant_of_a_linear_map():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 3)
    x = torch.rand(5, 12)
    est = empirical_lipschitz(lin, x, eps=0.01)
    exact = lin.weight.abs().sum(1).max().item()  # l-inf -> l-inf operator norm: max row l1 norm
    assert (est <= exact * (1 + 1e-5)).all()
    assert est.max() >= exact * (1 - 1e-5)


def test_below_bound_on_linf_dist_net():
    model, x, _ = trained_tiny("mlp")
    est = empirical_lipschitz(model, x[:16], steps=10)
    assert (est <= model.linf_lipschitz() * (1 + 1e-4)).all()  # 1 / std = 4
    assert est.max() > 1.0  # not vacuous


def test_lp_relaxed_net_exceeds_one_over_std_but_not_prop_4_1_bound():
    torch.manual_seed(0)
    x, _ = blobs(12)
    net = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=32, depth=3, mean=[0.5], std=0.25,
                       identity_init=False).eval()
    set_p(net, 2.0)
    est = empirical_lipschitz(net, x, eps=0.02)
    assert est.max() > 4.0 * 1.5  # far from 1-Lipschitz (1 / std = 4)
    assert (est <= net.linf_lipschitz() * (1 + 1e-6)).all()  # d^(L/p) / std (Zhang22 Prop. 4.1)
    for m in net.modules():
        if hasattr(m, "relaxation"):
            m.relaxation = "lse"
    est_lse = empirical_lipschitz(net, x, eps=0.02)
    assert (est_lse <= 4.0 * (1 + 1e-4)).all() and net.linf_lipschitz() == 4.0
    set_p(net, math.inf)
