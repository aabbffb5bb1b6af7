"""Pairwise bounds (004 §4.1.1, Table 2): L_ij <= L_i + L_j, L_ij <= sqrt(2) L, summaries, registry."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.bounds import BOUNDS, BoundContext, compute_bounds
from lipcert.bounds.liplt import liplt, naive_bounds
from lipcert.bounds.pairwise import summarize, table2
from lipcert.models import build

from .liplt_helpers import blobs, convnet, mlp, train_ce

torch.manual_seed(5)
MODELS = {
    "mlp": mlp(widths=(12, 24, 24, 24, 6)),
    "conv_trained": train_ce(convnet(classes=5), *blobs(100, (2, 8, 8), 5), steps=30),
    "residual": build("resmlp_l2", in_shape=(1, 3, 4), width=12, depth=2, num_classes=6),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["upper", "estimate", "naive"])
def test_pairwise_relations(name, mode):
    model = MODELS[name]
    res = naive_bounds(model) if mode == "naive" else liplt(model, mode, iters=100, tol=1e-6)
    p, l_i = res.pairwise, res.per_class
    k = p.shape[0]
    assert p.shape == (k, k) and torch.equal(p, p.T) and (p.diagonal() == 0).all()
    off = ~torch.eye(k, dtype=torch.bool)
    rel = 1e-9 if mode != "estimate" else 1e-6
    assert (p[off] <= (l_i[:, None] + l_i[None, :])[off] * (1 + rel)).all()
    assert (p <= math.sqrt(2) * res.lipschitz * (1 + rel)).all()
    assert (l_i <= res.lipschitz * (1 + rel)).all()
    assert (p[off] > 0).all()


def test_summary_matches_table2_definitions():
    res = liplt(MODELS["mlp"])
    s = summarize(res)
    k = res.pairwise.shape[0]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    assert s.l_ij == pytest.approx(sum(float(res.pairwise[i, j]) for i, j in pairs) / len(pairs))
    assert s.l_i_plus_l_j == pytest.approx(sum(float(res.per_class[i] + res.per_class[j]) for i, j in pairs) / len(pairs))
    assert s.sqrt2_l == pytest.approx(math.sqrt(2) * res.lipschitz)
    assert s.l_ij <= s.l_i_plus_l_j and s.l_ij <= s.sqrt2_l and s.l_ij_max >= s.l_ij
    t = table2(MODELS["mlp"])
    assert set(t) == {"naive", "liplt"} and t["liplt"].l_ij < t["naive"].l_ij
    assert t["naive"].as_dict()["method"] == "naive"


def test_registered_for_lipcert_bounds():
    model = MODELS["conv_trained"]
    for name in ("naive", "liplt", "pairwise_mean", "pairwise_max", "pairwise_naive_mean"):
        assert name in BOUNDS and BOUNDS[name].kind == "upper" and BOUNDS[name].applies(model)
    ctx = BoundContext(model, torch.rand(3, 2, 8, 8), torch.zeros(3, dtype=torch.long), eps=0.1)
    vals = {v.name: v for v in compute_bounds(ctx, ["naive", "liplt", "pairwise_mean", "pairwise_max", "pairwise_naive_mean"])}
    assert vals["liplt"].value <= vals["naive"].value
    assert vals["pairwise_mean"].value <= vals["pairwise_max"].value <= math.sqrt(2) * vals["liplt"].value * (1 + 1e-9)
    assert vals["pairwise_mean"].value < vals["pairwise_naive_mean"].value
    assert all(v.seconds >= 0 for v in vals.values())
    # the l-inf nets and other models are not claimed
    lin = build("linf_mlp", in_shape=[1, 4, 4], num_classes=3, width=8, depth=2)
    assert not BOUNDS["liplt"].applies(lin)
