"""Helpers shared by the l-inf-family tests: small data, brief training, Lipschitz pair checks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tests.conftest import blobs  # noqa: F401  (re-exported for the l-inf family tests)


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


_CACHE: dict = {}


def trained_tiny(kind: str = "mlp", seed: int = 1):
    """(model, x, y): a tiny model trained briefly on blobs; cached per process (treat as read-only).

    kinds: "mlp" (linf_mlp), "conv" (linf_conv on 1x6x6), "hybrid" (linf_mlp_hybrid), "binary" (linf_mlp
    on {0, 1}-valued blobs, where clipping to [0, 1] matters for interval bounds).
    """
    key = (kind, seed)
    if key in _CACHE:
        return _CACHE[key]
    from lipcert import models

    torch.manual_seed(seed)
    if kind == "conv":
        x, y = blobs(64, shape=(1, 6, 6), seed=seed)
        model = models.build("linf_conv", in_shape=[1, 6, 6], num_classes=4, width=3, fc=16, mean=[0.5], std=0.25)
        model = train_model_briefly(model, x, y, steps=30)
    elif kind == "hybrid":
        x, y = blobs(120, seed=seed)
        model = models.build("linf_mlp_hybrid", in_shape=[1, 6, 6], num_classes=4, width=32, depth=2, head_hidden=16,
                             mean=[0.5], std=0.25)
        model = train_hybrid_briefly(model, x, y)
    elif kind == "binary":
        x, y = blobs(120, seed=seed, spread=0.1)
        x = (x > 0.5).float()
        model = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=32, depth=3, mean=[0.5], std=0.25)
        model = train_model_briefly(model, x, y, steps=100, theta=0.6)
    else:
        x, y = blobs(120, seed=seed)
        model = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=32, depth=3, mean=[0.5], std=0.25)
        model = train_model_briefly(model, x, y, steps=50)
    _CACHE[key] = (model, x, y)
    return _CACHE[key]


def train_hybrid_briefly(model: nn.Module, x: Tensor, y: Tensor, steps: int = 80, lr: float = 0.02, eps: float = 0.05) -> nn.Module:
    """Adam on kappa * CE(worst-case logits over the feature box) + (1 - kappa) * CE (Zhang21 code's recipe)."""
    from lipcert.bounds.hybrid_head import head_bounds, head_ops
    from lipcert.nn import set_p

    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-10)
    model.train()
    for step in range(steps):
        set_p(model, 8.0 if step < steps // 2 else math.inf)
        f = model.backbone(x)
        logits = model.head(f)
        rho = torch.full((len(y),), eps * 4.0 * min(1.0, 2 * step / steps))
        lower, _ = head_bounds(head_ops(model.head, dtype=None), f.flatten(1), rho, y, sound=False)
        worst = -lower.scatter(1, y[:, None], 0.0)
        loss = 0.5 * torch.nn.functional.cross_entropy(worst, y) + 0.5 * torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_p(model, math.inf)
    return model.eval()
