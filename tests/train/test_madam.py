"""MAdam (Bernstein et al. 2020; EMAReport §2.2): the multiplicative update, its invariants, registration."""

from __future__ import annotations

import math

import torch

from lipcert import models
from lipcert.config import OptimConfig
from lipcert.losses import mixed_loss
from lipcert.train import build_optimizer
from lipcert.train.madam import MAdam
from tests.linf_family_helpers import blobs


def test_one_and_two_steps_match_the_formula():
    w0 = torch.tensor([0.5, -2.0, 1.0, 0.0])
    p = torch.nn.Parameter(w0.clone())
    opt = MAdam([p], lr=0.1, beta=0.9)
    grads = [torch.tensor([1.0, 1.0, -0.5, 3.0]), torch.tensor([0.2, -1.0, -0.5, 1.0])]
    v = torch.zeros(4)
    w = w0.clone()
    w_max = 3.0 * float(w0.pow(2).mean().sqrt())
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        v = 0.9 * v + 0.1 * g * g
        g_norm = (g / (v / (1 - 0.9**t)).sqrt()).clamp(-10, 10)
        w = (w * torch.exp(-0.1 * g_norm * torch.sign(w))).clamp(-w_max, w_max)
        torch.testing.assert_close(p.detach(), w)


def test_signs_kept_zeros_stay_and_magnitudes_capped():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50))
    with torch.no_grad():
        p[:5] = 0
    signs = torch.sign(p.detach()).clone()
    cap = 3.0 * float(p.detach().pow(2).mean().sqrt())
    opt = MAdam([p], lr=0.5)
    for _ in range(100):
        p.grad = -torch.sign(p.detach()) * torch.rand(50)  # always push magnitudes up
        opt.step()
    assert torch.equal(torch.sign(p.detach()), signs)
    assert (p.detach()[:5] == 0).all()
    assert p.detach().abs().max() <= cap * (1 + 1e-6)
    assert p.detach().abs().max() >= cap * (1 - 1e-6)


def test_registered_and_trains_a_linf_net():
    torch.manual_seed(0)
    x, y = blobs(64)
    net = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=16, depth=3, mean=[0.5], std=0.25, p=8.0)
    opt = build_optimizer([{"params": list(net.parameters())}], OptimConfig(name="madam", lr=0.01))
    assert isinstance(opt, MAdam)
    losses = []
    for _ in range(30):
        loss = mixed_loss(net(x), y, 1.0, 0.5, 0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    state = opt.state_dict()  # checkpointable with weights_only: tensors and plain numbers only
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)
    assert math.isfinite(losses[-1])
