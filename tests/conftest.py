"""Shared fixtures: small deterministic tensors and tiny trained models."""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def tiny_linf_net(width: int = 32, depth: int = 3, in_shape=(1, 6, 6), num_classes: int = 4, p: float = math.inf):
    from lipcert import models

    return models.build(
        "linf_mlp", in_shape=list(in_shape), num_classes=num_classes, width=width, depth=depth,
        mean=[0.5], std=0.25, p=p,
    )


def blobs(n: int = 200, num_classes: int = 4, shape=(1, 6, 6), seed: int = 0, spread: float = 0.08):
    """Separable Gaussian blobs in [0, 1]^d: class k is centred on a random prototype."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    protos = torch.rand(num_classes, d, generator=g)
    y = torch.arange(n) % num_classes
    x = (protos[y] + spread * torch.randn(n, d, generator=g)).clamp(0, 1)
    return x.view(n, *shape), y


def bands(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 well separated classes of 1x8x8 images: class c is bright in columns 3c, 3c + 1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=g)
    for c in range(3):
        x[y == c, :, :, 3 * c : 3 * c + 2] += 0.8
    return x.clamp(0, 1), y


def train_briefly(model, x, y, steps: int = 60, lr: float = 0.02, theta: float = 0.4, p_schedule=(8.0, math.inf)):
    """A few Adam steps of the mixed loss (p from p_schedule[0] to p_schedule[1] half-way)."""
    from lipcert.losses import mixed_loss
    from lipcert.nn import set_p

    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-10)
    model.train()
    for step in range(steps):
        set_p(model, p_schedule[0] if step < steps // 2 else p_schedule[1])
        loss = mixed_loss(model(x), y, 1.0, 0.05 if step < steps // 2 else 0.0, theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_p(model, math.inf)
    return model.eval()


@pytest.fixture(scope="session")
def trained_linf_net():
    """A tiny l-inf-dist MLP trained on blobs, with its data: (model, x, y)."""
    torch.manual_seed(1)
    x, y = blobs(240)
    model = tiny_linf_net(width=48, depth=3)
    return train_briefly(model, x, y), x, y
