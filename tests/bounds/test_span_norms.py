"""Span norms: rigorous upper bounds (materialised / products) vs exact SVD, batched power iteration."""

from __future__ import annotations


import pytest
import torch

from lipcert.bounds.liplt import as_ltnet
from lipcert.bounds.span_norms import Budget, gram_norm_upper, power_span_norms, span_vectors, upper_span_norms
from lipcert.models import build

from .liplt_helpers import convnet, mlp
from .test_ltnet import span_matrix


def exact_norm(net, sp) -> float:
    return float(torch.linalg.matrix_norm(span_matrix(net, sp), 2)) * abs(sp.scalar)


def test_gram_norm_upper_is_tight_upper():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 50), (50, 3), (40, 40)]:
        b = torch.randn(shape, generator=g, dtype=torch.float64)
        exact = float(torch.linalg.matrix_norm(b, 2))
        up = gram_norm_upper(b)
        assert exact <= up <= exact * (1 + 1e-10)
    assert gram_norm_upper(torch.zeros(0, 4, dtype=torch.float64)) == 0.0


@pytest.mark.parametrize("kind", ["mlp", "conv", "residual"])
def test_upper_span_norms_bound_exact_norms(kind):
    model = {"mlp": mlp(widths=(12, 16, 16, 16, 5)), "conv": convnet(),
             "residual": build("resmlp_l2", in_shape=(1, 3, 3), width=6, depth=3)}[kind]
    net = as_ltnet(model)
    spans = net.spans()
    vals, report, _ = upper_span_norms(net, spans)
    assert report.materialized > 0 and set(report.kinds.values()) <= {"exact", "product", "single"}
    for sp in spans:
        ex = exact_norm(net, sp)
        up = vals[(sp.s, sp.e)]
        assert ex <= up, (sp.s, sp.e)
        if report.kinds[(sp.s, sp.e)] == "exact":
            assert up <= ex * (1 + 1e-9) + 1e-12
    # without materialisation every bound is a product of single-layer bounds: still upper, looser
    loose, rep0, _ = upper_span_norms(net, spans, Budget.none())
    assert rep0.materialized == 0
    for sp in spans:
        assert vals[(sp.s, sp.e)] <= loose[(sp.s, sp.e)] * (1 + 1e-12)
        assert exact_norm(net, sp) <= loose[(sp.s, sp.e)]


def test_budget_limits_materialisation():
    net = as_ltnet(convnet(in_shape=(2, 8, 8)))
    spans = net.spans()
    _, small, _ = upper_span_norms(net, spans, Budget(max_vectors=20))
    _, full, _ = upper_span_norms(net, spans)
    assert small.materialized < full.materialized


def test_power_estimates_approach_from_below_and_persist():
    net = as_ltnet(mlp(widths=(12, 16, 16, 16, 5)))
    spans = net.spans()
    store = span_vectors()
    gen = torch.Generator().manual_seed(0)
    sig, done = power_span_norms(net, spans, iters=300, store=store, tol=1e-10, generator=gen)
    for sp, s in zip(spans, sig):
        ex = exact_norm(net, sp) / sp.scalar
        assert float(s) <= ex * (1 + 1e-9)
        assert float(s) >= ex * (1 - 1e-3)
    # persistent vectors: one more iteration from the stored ones keeps the converged values
    sig2, _ = power_span_norms(net, spans, iters=1, store=store)
    torch.testing.assert_close(sig2, sig, rtol=1e-6, atol=0)
    # the store round-trips through a state_dict into a fresh one
    fresh = span_vectors()
    fresh.load_state_dict(store.state_dict())
    sig3, _ = power_span_norms(net, spans, iters=1, store=fresh)
    torch.testing.assert_close(sig3, sig2)


def test_power_is_differentiable():
    model = mlp()
    net = as_ltnet(model, dtype=None)
    sig, _ = power_span_norms(net, net.spans(), iters=2)
    sig.sum().backward()
    assert model[2].weight.grad is not None and torch.isfinite(model[2].weight.grad).all()


def test_upper_needs_float64():
    net = as_ltnet(mlp(), dtype=None)
    with pytest.raises(ValueError, match="float64"):
        upper_span_norms(net, net.spans())
