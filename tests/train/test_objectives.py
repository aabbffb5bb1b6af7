"""Objectives: hinge thresholds are in raw input units, the temperature trains at its own rate."""

from __future__ import annotations

import pytest
import torch

from lipcert import certify
from lipcert.train.objectives import HingeObjective, MixedObjective, StepContext, build_objective, logit_scale
from tests.conftest import blobs


def test_logit_scale_is_one_over_std_whatever_p(trained_linf_net):
    net, _, _ = trained_linf_net
    assert logit_scale(net) == pytest.approx(4.0)  # std 0.25
    net.set_p(8.0)
    try:
        assert logit_scale(net) == pytest.approx(4.0)
    finally:
        net.set_p(float("inf"))
    assert logit_scale(torch.nn.Linear(2, 2)) == 1.0


def test_zero_hinge_loss_means_certified_at_theta_over_two(trained_linf_net):
    """theta is the margin in raw units: samples past it are certified at eps = theta / 2."""
    net, x, y = trained_linf_net
    cert = certify.margin(net, x, y)
    theta = float(cert.radius.median()) * 2  # half the samples pass
    obj = HingeObjective(theta)
    with torch.no_grad():
        logits = net(x)
    scale = logit_scale(net)
    passed = (logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -1e9).amax(1)) >= theta * scale
    assert passed.any() and (~passed).any()
    assert (cert.radius[passed] >= theta / 2 - 1e-5).all()
    out = obj(net, x, y, StepContext({}, torch.arange(len(y)), 0.0))
    assert out.loss > 0


def test_mixed_objective_temperature_and_lambda():
    x, y = blobs(16)
    net = __import__("tests.conftest", fromlist=["tiny_linf_net"]).tiny_linf_net()
    obj = build_objective({"name": "mixed", "theta": 0.3})
    assert isinstance(obj, MixedObjective) and obj.lr_factor == 0.2
    ctx0 = StepContext({"lam": 0.0}, torch.arange(16), 0.0)
    ctx1 = StepContext({"lam": 0.5}, torch.arange(16), 0.0)
    l0 = obj(net, x, y, ctx0).loss
    l1 = obj(net, x, y, ctx1).loss
    assert l1 > l0  # the CE term is added with weight lam
    l1.backward()
    assert obj.temperature.grad is not None and obj.temperature.grad != 0
