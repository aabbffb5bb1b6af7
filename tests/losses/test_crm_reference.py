"""lipcert's CRM step against an independent re-implementation of the Fazlyab23 authors' training step
(tests/losses/crm_reference.py) on identical weights, batches and power-iteration vectors: LipLT
pairwise bounds, loss, active set (the dynamic margin), gradients with the vectors detached and
with the gradient through the power iterations, and the warm-up handling of the vectors."""

from __future__ import annotations

import pytest
import torch

from lipcert.bounds.liplt import LipLTEstimator
from lipcert.bounds.ltnet import LTNet
from lipcert.bounds.span_norms import span_key
from lipcert.losses.crm import crm_loss
from lipcert.models import build
from lipcert.train import build_objective
from lipcert.train.objectives import StepContext

from .crm_reference import AuthorsCRM

SHAPE = (1, 16, 16)


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build("4c3f", in_shape=SHAPE, width=0.25, activation="relu", mean=(0.0,), std=1.0).double()
    x = torch.rand(48, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10  # a third misclassified: never active
    spans = LTNet.from_model(model).spans()
    g = torch.Generator().manual_seed(seed + 1)
    vec = {(sp.s, sp.e): torch.randn(1, *sp.in_shape, generator=g, dtype=torch.float64) for sp in spans}
    return model, x, y, spans, vec


def estimator(spans, vec, iters: int, through: bool) -> LipLTEstimator:
    est = LipLTEstimator("liplt", iters, grad_through=through)
    for sp in spans:
        est.vectors.put_block(span_key(sp), vec[(sp.s, sp.e)] / vec[(sp.s, sp.e)].norm())
    return est


def grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def median_radius(model, x, y, pairwise) -> float:
    """A threshold half-way between two radii of correct samples (no sample sits on it)."""
    with torch.no_grad():
        out = crm_loss(model(x), y, pairwise, 5.0, 1.0)
    r = out.min_radius[out.active].sort().values
    k = r.numel() // 2
    return float(r[k - 1] + r[k]) / 2


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("through", [False, True])
def test_bounds_loss_active_and_gradient_match_the_authors_step(iters, through):
    model, x, y, spans, vec = setup()
    est = estimator(spans, vec, iters, through)
    ref = AuthorsCRM(model, SHAPE, iters, vec)
    b = est(model)
    r0 = median_radius(model, x, y, b.pairwise.detach())  # half the correct samples active
    model.zero_grad()
    out = crm_loss(model(x), y, b.pairwise, 5.0, 30.0, r0)
    out.loss.backward()
    g_lipcert = grads(model)
    model.zero_grad()
    want = ref.loss(x, y, 5.0, 30.0, r0, detach=not through)
    want["loss"].backward()
    g_ref = grads(model)
    pair = want["pairwise"].detach().clone().fill_diagonal_(0.0)
    torch.testing.assert_close(b.pairwise.detach(), pair, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack(b.hidden).detach(), want["hidden"].detach(), rtol=1e-10, atol=0.0)
    assert torch.equal(out.active, want["active"]) and 0 < int(out.active.sum()) < int((y == model(x).argmax(1)).sum())
    torch.testing.assert_close(out.loss.detach(), want["loss"].detach(), rtol=1e-12, atol=1e-12)
    assert float((g_lipcert - g_ref).norm() / g_ref.norm()) < 1e-9
    for sp in spans:  # the stored vectors advance identically
        torch.testing.assert_close(est.vectors.get_block(span_key(sp)).reshape(ref.vectors[(sp.s, sp.e)].shape), ref.vectors[(sp.s, sp.e)], rtol=1e-9, atol=1e-12)


def test_gradient_through_power_iteration_differs_from_detached_on_fresh_vectors():
    """The two gradient modes are different estimators (they agree only at converged vectors)."""
    model, x, y, spans, vec = setup()
    out = []
    for through in (False, True):
        b = estimator(spans, vec, 1, through)(model)
        model.zero_grad()
        crm_loss(model(x), y, b.pairwise, 5.0, 30.0, 1e9).loss.backward()
        out.append(grads(model))
    assert float((out[0] - out[1]).norm() / out[1].norm()) > 1e-3


def test_gradient_modes_agree_once_the_vectors_have_converged():
    model, x, y, spans, vec = setup()
    warm = estimator(spans, vec, 300, False)
    with torch.no_grad():
        warm(model)
    conv = {(sp.s, sp.e): warm.vectors.get_block(span_key(sp)) for sp in spans}
    out = []
    for through in (False, True):
        b = estimator(spans, conv, 1, through)(model)
        model.zero_grad()
        crm_loss(model(x), y, b.pairwise, 5.0, 30.0, 1e9).loss.backward()
        out.append(grads(model))
    assert float((out[0] - out[1]).norm() / out[1].norm()) < 1e-3


def test_warmup_steps_advance_the_power_iteration_like_the_authors():
    """The authors compute the Lipschitz constants (and so step the vectors) on every step, CE
    warm-up included; the first CRM step must not start from random vectors."""
    model, x, y, spans, vec = setup()
    obj = build_objective({"name": "crm", "warmup_epochs": 1, "power_iters": 2}).double()
    for sp in spans:
        obj.estimator.vectors.put_block(span_key(sp), vec[(sp.s, sp.e)] / vec[(sp.s, sp.e)].norm())
    ref = AuthorsCRM(model, SHAPE, 2, vec)
    for _ in range(3):  # three warm-up steps: plain CE, vectors still stepped
        out = obj(model, x, y, StepContext({}, torch.arange(48), 0.5))
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
        with torch.no_grad():
            ref.pairwise()
    for sp in spans:
        torch.testing.assert_close(obj.estimator.vectors.get_block(span_key(sp)).reshape(ref.vectors[(sp.s, sp.e)].shape), ref.vectors[(sp.s, sp.e)], rtol=1e-9, atol=1e-12)
    off = build_objective({"name": "crm", "warmup_epochs": 1, "track_warmup": False})
    off(model.float(), x.float(), y, StepContext({}, torch.arange(48), 0.5))
    assert not any(k.startswith("vectors.u_") for k in off.estimator.state_dict())


def test_objective_options_are_checked():
    with pytest.raises(ValueError, match="power_grad"):
        build_objective({"name": "crm", "power_grad": "sometimes"})
    with pytest.raises(ValueError, match="power_iters"):
        build_objective({"name": "crm", "power_iters": 0})
