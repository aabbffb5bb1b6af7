"""Small networks and empirical Lipschitz lower bounds shared by the LipLT tests."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lipcert.models.mcnf import MCNF
from lipcert.nn.activations import make_activation
from lipcert.nn.common import Flatten, InputNormalize
from tests.conftest import blobs as conftest_blobs


def mlp(widths=(12, 24, 24, 5), activation="relu", in_shape=(1, 3, 4), normalize=True, seed=0) -> MCNF:
    """``InputNormalize, Flatten, (Linear, act)*, Linear`` with the given widths (first = input numel)."""
    torch.manual_seed(seed)
    assert math.prod(in_shape) == widths[0]
    layers: list[nn.Module] = [InputNormalize([0.3], 0.4)] if normalize else []
    layers.append(Flatten())
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), make_activation(activation, (b,))]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return MCNF(*layers, in_shape=in_shape)


def convnet(in_shape=(2, 8, 8), channels=(4, 6), hidden=16, classes=4, activation="relu", seed=0) -> MCNF:
    """A small strided CNN: conv 3x3 s1 p1, conv 4x4 s2 p1, fc, fc."""
    torch.manual_seed(seed)
    c, h, w = in_shape
    layers: list[nn.Module] = [InputNormalize([0.5] * c, 0.25)]
    layers += [nn.Conv2d(c, channels[0], 3, 1, 1), make_activation(activation, (channels[0], h, w))]
    layers += [nn.Conv2d(channels[0], channels[1], 4, 2, 1), make_activation(activation, (channels[1], h // 2, w // 2))]
    layers += [Flatten(), nn.Linear(channels[1] * (h // 2) * (w // 2), hidden), make_activation(activation, (hidden,))]
    layers.append(nn.Linear(hidden, classes))
    return MCNF(*layers, in_shape=in_shape)


def blobs(n, in_shape, classes, seed=0, spread=0.1):
    """tests.conftest.blobs with this module's argument order and spread."""
    return conftest_blobs(n, num_classes=classes, shape=tuple(in_shape), seed=seed, spread=spread)


def train_ce(model, x, y, steps=80, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def empirical_lipschitz(model, c: torch.Tensor, in_shape, n=512, steps=40, seed=0) -> float:
    """Largest ratio |c^T (f(x) - f(x'))| / ||x - x'|| (and gradient norm) found by random sampling
    and a gradient-ascent attack on pairs (x, x'): a *lower* bound of Lip(c^T f)."""
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).double().eval()
    c = c.double()
    x = torch.rand((n, *in_shape), generator=g, dtype=torch.float64) * 2 - 0.5
    xs = x.clone().requires_grad_(True)
    gr = torch.autograd.grad((model(xs) @ c).sum(), xs)[0]
    best = float(gr.flatten(1).norm(dim=1).max())
    x2 = (x + 1e-2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    x1 = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x1, x2], lr=0.02)
    for _ in range(steps):
        d = (x1 - x2).flatten(1).norm(dim=1).clamp_min(1e-9)
        ratio = ((model(x1) - model(x2)) @ c).abs() / d
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best
