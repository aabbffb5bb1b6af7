"""r-separation (Zhang22 Def. 3.1) against brute force; nearest-neighbour nets (Zhang22 Thm 3.2 / A.2)
certify 100% of an r-separated training set at eps = 0.99 r through the ordinary certify path."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert import certify
from lipcert.analysis import min_interclass_distance, nearest_neighbour_net, r_separation
from lipcert.attacks import pgd


def _brute(a, ya, b, yb):
    d = (a.flatten(1).double()[:, None] - b.flatten(1).double()[None]).abs().amax(-1)
    d[ya[:, None] == yb[None, :]] = math.inf
    return float(d.min())


def _data(n=60, k=4, shape=(1, 4, 4), seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    if levels:
        x = torch.round(x * levels) / levels  # pixel-like values with ties
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("seed", range(3))
def test_min_distances_match_brute_force(seed, monkeypatch):
    import importlib

    sep = importlib.import_module("lipcert.analysis.separation")

    x, y = _data(seed=seed, levels=255)
    xt, yt = _data(n=25, seed=seed + 10, levels=255)
    monkeypatch.setattr(sep, "BLOCK", 37)  # many small blocks
    s = r_separation(x, y, xt, yt)
    assert s.min_dist_train == _brute(x, y, x, y)
    assert s.min_dist_test_train == _brute(xt, yt, x, y)
    assert s.r == s.min_dist_train / 2
    i, j = s.train_pair
    assert y[i] != y[j] and float((x[i].double() - x[j].double()).abs().max()) == s.min_dist_train
    ti, tj = s.test_pair
    assert yt[ti] != y[tj] and float((xt[ti].double() - x[tj].double()).abs().max()) == s.min_dist_test_train


def test_no_pair_gives_inf():
    x, _ = _data(n=5)
    y = torch.zeros(5, dtype=torch.long)
    d, pair = min_interclass_distance(x, y, x, y)
    assert d == math.inf and pair == (-1, -1)


def _expected_logits(net_x, x, y, k):
    d = (net_x.flatten(1).double()[:, None] - x.flatten(1).double()[None]).abs().amax(-1)
    out = torch.full((net_x.shape[0], k), math.inf, dtype=torch.float64)
    for j in range(k):
        if (y == j).any():
            out[:, j] = d[:, y == j].amin(1)
    return -out


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_nearest_neighbour_net_computes_negative_nn_distances(layers):
    x, y = _data(n=23, seed=1)  # 23 is not divisible by L - 1
    net = nearest_neighbour_net(x, y, num_classes=4, layers=layers)
    tol = 1e-12 if layers == 2 else 16 * 2.0**-24  # float32 storage of x_i -+ C (see the docstring)
    got = net.double()(x.double())
    torch.testing.assert_close(got, _expected_logits(x, x, y, 4), rtol=0, atol=tol)
    # also near (not only at) the data: at points within r of a training point
    s = r_separation(x, y)
    xp = x + (torch.rand_like(x) * 2 - 1) * 0.5 * s.r
    torch.testing.assert_close(net.double()(xp.double()), _expected_logits(xp, x, y, 4), rtol=0, atol=tol)


@pytest.mark.parametrize("layers", [2, 3])
def test_nearest_neighbour_net_certifies_everything_at_099_r(layers):
    x, y = _data(n=80, k=3, shape=(1, 5, 5), seed=2, levels=255)
    s = r_separation(x, y)
    assert s.r > 0.01
    net = nearest_neighbour_net(x, y, layers=layers)
    cert = certify.certify(net, x, y, method="margin")  # the ordinary margin certificate (L = 1)
    assert cert.method == "linf_margin"
    assert cert.certified_accuracy(0.99 * s.r) == 1.0
    assert (cert.radius >= s.r * (1 - 1e-4)).all()
    att = pgd(net, x, y, eps=0.99 * s.r, steps=30, restarts=2, step_size=s.r / 10)
    assert att.robust.all()


def test_nearest_neighbour_net_checkpoint_spec():
    from lipcert import models

    x, y = _data(n=10)
    net = nearest_neighbour_net(x, y, layers=3)
    rebuilt = models.build(net.lipcert_spec["name"], **net.lipcert_spec["kwargs"])
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x), net(x))


def test_mnist5k_subset_matches_brute_force():
    data = pytest.importorskip("lipcert.data")
    x, y = data.load("mnist5k", "train")
    xt, yt = data.load("mnist5k", "test")
    g = torch.Generator().manual_seed(0)  # the splits are sorted by class: take random subsets
    i, it = torch.randperm(len(y), generator=g)[:300], torch.randperm(len(yt), generator=g)[:100]
    x, y, xt, yt = x[i], y[i], xt[it], yt[it]
    assert len(torch.unique(y)) == 10
    s = r_separation(x, y, xt, yt)
    assert s.min_dist_train == _brute(x, y, x, y)
    assert s.min_dist_test_train == _brute(xt, yt, x, y)
    net = nearest_neighbour_net(x, y, num_classes=10)
    cert = certify.certify(net, x, y)
    assert cert.certified_accuracy(0.99 * s.r) == 1.0
