"""Pairwise bounds (Fazlyab23 §4.1.1, Table 2): L_ij <= L_i + L_j, L_ij <= sqrt(2) L, summaries, registry."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.bounds import BOUNDS, BoundContext, compute_bounds
from lipcert.bounds.liplt import LipLTResult, _row_quantities, liplt, mirror_upper, naive_bounds, symmetric_upper
from lipcert.bounds.pairwise import pairwise_summary, table2
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
    # exact by construction: one triangle is computed and mirrored (LipLTResult enforces it)
    assert p.shape == (k, k) and torch.equal(p, p.T) and (p.diagonal() == 0).all()
    off = ~torch.eye(k, dtype=torch.bool)
    rel = 1e-9 if mode != "estimate" else 1e-6
    assert (p[off] <= (l_i[:, None] + l_i[None, :])[off] * (1 + rel)).all()
    assert (p <= math.sqrt(2) * res.lipschitz * (1 + rel)).all()
    assert (l_i <= res.lipschitz * (1 + rel)).all()
    assert (p[off] > 0).all()


def test_summary_matches_table2_definitions():
    res = liplt(MODELS["mlp"])
    s = pairwise_summary(res)
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


def test_symmetry_by_construction_keeps_the_larger_bound():
    """Two computations of L_ij = L_ji that differ in the last bits (summation order / SIMD width
    differ between CPUs) must give one symmetric matrix whose entries bound both: the max."""
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(5, 5, generator=gen, dtype=torch.float64)
    s = symmetric_upper(a)
    assert torch.equal(s, s.T) and (s.diagonal() == 0).all()
    off = ~torch.eye(5, dtype=torch.bool)
    assert (s[off] >= a[off]).all() and (s[off] >= a.T[off]).all()
    assert torch.equal(s[off], torch.maximum(a, a.T)[off])
    m = mirror_upper(a)
    iu = torch.triu_indices(5, 5, 1)
    assert torch.equal(m, m.T) and torch.equal(m[iu[0], iu[1]], a[iu[0], iu[1]]) and (m.diagonal() == 0).all()
    res = LipLTResult(lipschitz=1.0, pairwise=a.clone(), per_class=torch.ones(5, dtype=torch.float64), hidden=[], kind="estimate")
    assert torch.equal(res.pairwise, s)


@pytest.mark.parametrize("rigorous", [True, False])
def test_row_quantities_symmetric_and_bound_the_plain_norms(rigorous):
    """Pairwise norms ||r_i - r_j|| of the last rows: exactly symmetric, and (rigorous) never below
    a plain float64 reference, (Gram form) equal to it to the Gram form's cancellation error."""
    gen = torch.Generator().manual_seed(4)
    rows = torch.randn(7, 3, 11, generator=gen, dtype=torch.float64)
    pair, _, _ = _row_quantities(rows, 0.0, rigorous)
    r = rows.reshape(7, -1)
    ref = (r[:, None, :] - r[None, :, :]).norm(dim=2)
    assert torch.equal(pair, pair.T) and (pair.diagonal() == 0).all()
    if rigorous:
        assert (pair >= ref).all() and torch.allclose(pair, ref, rtol=1e-12, atol=0)
    else:  # |r_i|^2 + |r_j|^2 - 2 r_i.r_j loses ~u * |r|^2 / ||r_i - r_j|| absolutely
        torch.testing.assert_close(pair, ref, rtol=1e-10, atol=1e-12)
