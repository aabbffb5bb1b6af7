"""Tiny l2 networks and data for the bounds / certify / objective tests."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.models.mcnf import build_mcnf
from tests.conftest import blobs

IN_SHAPE = (1, 8, 8)


def tiny_mcnf(activation: str = "relu_theta", seed: int = 0, width: float = 0.125, arch: str = "4c3f", theta: float = 1.0):
    """4C3F at 1/8 width on 8x8 inputs (channels 4, 4, 8, 8; FC 64, 64), input normalisation inside."""
    torch.manual_seed(seed)
    return build_mcnf(arch, IN_SHAPE, 4, activation, theta, width, mean=[0.5], std=0.3).eval()


def l2_blobs(n: int = 160, seed: int = 0):
    return blobs(n, num_classes=4, shape=IN_SHAPE, seed=seed, spread=0.05)


def train_l2_briefly(model, x, y, steps: int = 40, eps: float = 0.3, loss: str = "gloro", bound: str = "local", lr: float = 3e-3):
    """A few Adam steps of a worst-logit objective (eps and lambda ramped over the first half)."""
    from lipcert.train.objectives import StepContext
    from lipcert.train.objectives_l2 import LipschitzObjective

    obj = LipschitzObjective(loss, bound=bound, power_iters=2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    idx = torch.arange(x.shape[0])
    for step in range(steps):
        frac = min(1.0, (step + 1) / max(steps // 2, 1))
        out = obj(model, x, y, StepContext({"eps": eps * frac, "lam": frac}, idx, step / 10))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        obj.after_step(model)
    return model.eval()


def ball_points(x: torch.Tensor, eps: float, k: int, generator=None) -> torch.Tensor:
    """k points per sample in the closed l2 ball of radius eps (a quarter of them on the sphere)."""
    n = x.shape[0]
    d = torch.randn(k, *x.shape, generator=generator, dtype=x.dtype)
    d = d / d.flatten(2).norm(dim=2).view(k, n, *([1] * (x.dim() - 1)))
    r = torch.rand(k, n, generator=generator, dtype=x.dtype) ** (1.0 / math.prod(x.shape[1:]))
    r[: max(1, k // 4)] = 1.0
    return x.unsqueeze(0) + eps * r.view(k, n, *([1] * (x.dim() - 1))) * d


def empirical_lipschitz(model, x: torch.Tensor, eps: float | None, samples: int = 6, steps: int = 20) -> torch.Tensor:
    """Per sample, the largest ||f(a) - f(b)|| / ||a - b|| found by sampling and gradient ascent
    over pairs a, b in the l2 ball of radius eps around x (anywhere near x when eps is None), and
    the largest Jacobian spectral norm at the sampled points (a lower bound of the local Lipschitz
    constant on that ball)."""
    model = model.double().eval()
    x = x.double()
    radius = eps if eps is not None else 0.5
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    # Jacobian norms at sampled points
    pts = ball_points(x, radius, samples)
    for p in pts:
        jac = torch.autograd.functional.jacobian(lambda z: model(z).sum(0), p)  # (K, n, ...)
        jac = jac.flatten(2).permute(1, 0, 2)  # (n, K, D)
        best = torch.maximum(best, torch.linalg.matrix_norm(jac, ord=2))
    # gradient ascent on the difference quotient over pairs in the ball
    a = ball_points(x, radius * 0.9, 1)[0].clone().requires_grad_(True)
    b = (a.detach() + 1e-2 * torch.randn_like(a)).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=radius / 20)
    for _ in range(steps):
        q = (model(a) - model(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1).clamp_min(1e-9)
        best = torch.maximum(best, q.detach())
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
        with torch.no_grad():
            for t in (a, b):
                d = t - x
                n = d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                t.copy_(x + d * torch.clamp(radius / n, max=1.0))
    return best


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The nets here are tiny: one intra-op thread is as fast on an idle machine and several times
    faster on a shared one (threads of tiny convolutions mostly wait for each other). Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
