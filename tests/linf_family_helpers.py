"""Helpers shared by the l-inf-family tests: small data, brief training, Lipschitz pair checks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def blobs(n: int = 200, num_classes: int = 4, shape=(1, 6, 6), seed: int = 0, spread: float = 0.08) -> tuple[Tensor, Tensor]:
    """Separable Gaussian blobs in [0, 1]^d: class k is centred on a random prototype."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    protos = torch.rand(num_classes, d, generator=g)
    y = torch.arange(n) % num_classes
    x = (protos[y] + spread * torch.randn(n, d, generator=g)).clamp(0, 1)
    return x.view(n, *shape), y


def linf_ratio(f, a: Tensor, b: Tensor) -> Tensor:
    """``||f(a) - f(b)||_inf / ||a - b||_inf`` per pair (float64 inputs expected)."""
    num = (f(a) - f(b)).flatten(1).abs().amax(1)
    den = (a - b).flatten(1).abs().amax(1)
    return num / den


def random_pairs(shape, n: int = 64, seed: int = 0, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Pairs of float64 points: half far apart, half close (where the max coordinate may not switch)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, *shape, generator=g, dtype=torch.float64) * scale
    far = torch.randn(n // 2, *shape, generator=g, dtype=torch.float64) * scale
    near = a[n // 2 :] + 1e-3 * torch.randn(n - n // 2, *shape, generator=g, dtype=torch.float64)
    return a, torch.cat([far, near])


def train_layer_briefly(layer: nn.Module, x: Tensor, steps: int = 30, lr: float = 0.05, seed: int = 0) -> nn.Module:
    """A few Adam steps that pull the layer's outputs towards random targets (weights move off init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        target = torch.randn(layer(x).shape, generator=g)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        loss = (layer(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


def train_model_briefly(model: nn.Module, x: Tensor, y: Tensor, steps: int = 60, lr: float = 0.02, theta: float = 0.4,
                        p_schedule=(8.0, math.inf), batch: int | None = None, seed: int = 0) -> nn.Module:
    """A few Adam steps of the mixed loss (p from p_schedule[0] to p_schedule[1] half-way)."""
    from lipcert.losses import mixed_loss
    from lipcert.nn import set_p

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-10)
    model.train()
    for step in range(steps):
        set_p(model, p_schedule[0] if step < steps // 2 else p_schedule[1])
        idx = torch.randperm(len(y), generator=g)[:batch] if batch else slice(None)
        loss = mixed_loss(model(x[idx]), y[idx], 1.0, 0.05 if step < steps // 2 else 0.0, theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_p(model, math.inf)
    return model.eval()
