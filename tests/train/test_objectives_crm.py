"""The ``crm`` objective (Fazlyab23 Eq. 8): warm-up, LipLT pairwise bounds, metrics, state, projection."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.models import build
from lipcert.train import build_objective
from lipcert.train.objectives import StepContext


def ctx(epoch: float, **values) -> StepContext:
    return StepContext(values=values, index=torch.arange(8), epoch=epoch)


def setup():
    torch.manual_seed(0)
    model = build("4c3f", in_shape=(1, 8, 8), width=0.25, activation="relu_theta")
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    return model, x, y


def test_warmup_is_plain_cross_entropy():
    model, x, y = setup()
    obj = build_objective({"name": "crm", "warmup_epochs": 2})
    out = obj(model, x, y, ctx(1.5))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
    assert out.metrics["crm_active"] == 0.0
    out = obj(model, x, y, ctx(0.0, lam=0.0))  # lam = 0 scheduled: CE as well
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))


def test_crm_step_has_gradients_metrics_and_state():
    model, x, y = setup()
    obj = build_objective({"name": "crm", "t": 5.0, "lam": 3.0, "warmup_epochs": 0})
    out = obj(model, x, y, ctx(1.0))
    assert math.isfinite(float(out.loss)) and out.metrics["lip_pair_mean"] > 0 and out.metrics["lip_global"] > 0
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "weight" in n)
    state = obj.state_dict()
    assert any(k.startswith("estimator.vectors.u_") for k in state)
    fresh = build_objective({"name": "crm", "t": 5.0, "lam": 3.0, "warmup_epochs": 0})
    fresh.load_state_dict(state)
    a = obj.estimator(model).pairwise
    b = fresh.estimator(model).pairwise
    torch.testing.assert_close(a, b)


def test_after_step_projects_thresholds():
    model, x, y = setup()
    obj = build_objective({"name": "crm"})
    act = [m for m in model.modules() if hasattr(m, "theta")][0]
    with torch.no_grad():
        act.theta.fill_(-1.0)
    obj.after_step(model)
    assert (act.theta >= 0).all()


@pytest.mark.parametrize("spec,message", [({"t": 0}, "t must"), ({"g": "hinge"}, "g must"), ({"r0": -1}, "r0"),
                                           ({"bound": "sdp"}, "method"), ({"power_iters": 0}, "iters")])
def test_bad_settings(spec, message):
    with pytest.raises(ValueError, match=message):
        build_objective({"name": "crm", **spec})


def test_crm_grows_radii_compared_with_cross_entropy():
    """A few steps of CRM from the same start give larger certified-radius lower bounds than CE."""
    from lipcert.bounds.liplt import LipLTEstimator
    from lipcert.losses.crm import pairwise_radii

    g = torch.Generator().manual_seed(0)
    protos = torch.rand(4, 1, 8, 8, generator=g)
    y = torch.arange(96) % 4
    x = (protos[y] + 0.15 * torch.randn(96, 1, 8, 8, generator=g)).clamp(0, 1)
    results = {}
    for name in ("ce", "crm"):
        torch.manual_seed(0)
        model = build("resmlp_l2", in_shape=(1, 8, 8), num_classes=4, width=32, depth=2)
        obj = build_objective({"name": "crm", "lam": 0.0 if name == "ce" else 2.0, "t": 5.0, "warmup_epochs": 0})
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(60):
            out = obj(model, x, y, ctx(1.0))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        with torch.no_grad():
            lip = LipLTEstimator(iters=50)(model).pairwise
            r = pairwise_radii(model(x), y, lip).amin(1).clamp_min(0)
        results[name] = float(r.mean())
    assert results["crm"] > 1.5 * results["ce"]


def test_scheduled_r0_wins_over_the_constant():
    model, x, _ = setup()
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct
    obj = build_objective({"name": "crm", "t": 5.0, "lam": 3.0, "r0": 1e-9, "warmup_epochs": 0})
    assert obj(model, x, y, ctx(1.0)).metrics["crm_active"] == 0.0  # nothing below a tiny cap
    assert obj(model, x, y, ctx(1.0, r0=1e9)).metrics["crm_active"] == 1.0


@pytest.mark.parametrize("mode", ["pairwise", "per_class", "global"])
def test_baseline_losses_use_the_estimators_constants(mode):
    """loss: gloro_trades / lmt equal the loss functions on the estimator's constants in the
    chosen mode (same power-iteration vectors: two objectives loaded from one state)."""
    from lipcert.losses import gloro_trades_loss, pairwise_from, pairwise_worst_logits

    model, x, y = setup()
    for loss, values in [("gloro_trades", {"lam": 0.7, "eps": 0.3}), ("lmt", {"mu": 0.5, "eps": 0.3})]:
        obj = build_objective({"name": "crm", "loss": loss, "lipschitz": mode, "eps": 1.0, "warmup_epochs": 1})
        ref = build_objective({"name": "crm", "loss": loss, "lipschitz": mode, "eps": 1.0, "warmup_epochs": 1})
        obj(model, x, y, ctx(0.0))  # warm-up: CE, vectors tracked
        ref.load_state_dict(obj.state_dict())
        out = obj(model, x, y, ctx(1.0, **values))
        b = ref.estimator(model)
        pair = pairwise_from(mode, b.pairwise, b.per_class, b.lipschitz)
        z = model(x)
        if loss == "gloro_trades":
            expect = gloro_trades_loss(z, y, pairwise_worst_logits(z, y, 0.3, pair), 0.7)
        else:
            expect = torch.nn.functional.cross_entropy(pairwise_worst_logits(z, y, 0.5 * 0.3, pair, correct_only=True), y)
        torch.testing.assert_close(out.loss, expect, rtol=1e-5, atol=1e-6)
        out.loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "weight" in n)
        model.zero_grad()


def test_baseline_bad_settings():
    with pytest.raises(ValueError, match="eps"):
        build_objective({"name": "crm", "loss": "lmt"})
    with pytest.raises(ValueError, match="loss"):
        build_objective({"name": "crm", "loss": "trades"})
    with pytest.raises(ValueError, match="lipschitz"):
        build_objective({"name": "crm", "lipschitz": "classwise"})
