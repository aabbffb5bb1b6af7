"""PGD (lipcert/attacks/pgd.py): iterates stay in the eps-ball and the valid range; it finds
adversarial examples that provably exist and never reports one that cannot exist."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipcert.attacks import pgd


class Recorder(nn.Module):
    """A linear 2-class model that records every input it is evaluated on."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.lin = nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.stack([w, -w]) / 2)
            self.lin.bias.copy_(torch.tensor([b / 2, -b / 2]))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def _dist(a, b, norm):
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("outside", [False, True])
def test_iterates_stay_in_the_ball_and_the_range(norm, outside):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 3, 3, generator=g)
    if outside:  # unnormalised pixels: clamping to [0, 1] alone would move them far beyond eps
        x = x * 255.0
    model = Recorder(torch.randn(9, generator=g), 0.1)
    eps = 0.3
    pgd(model, x, torch.zeros(16, dtype=torch.long), eps, norm=norm, steps=10, restarts=3)
    assert len(model.seen) > 10
    slack = 4 * torch.finfo(torch.float32).eps * float(x.abs().max()) * (3 if norm == "l2" else 1)  # x + delta - x
    for xi in model.seen:
        assert (_dist(xi, x, norm) <= eps * (1 + 1e-6) + slack).all()
        lo, hi = torch.minimum(x, torch.zeros(())), torch.maximum(x, torch.ones(()))
        assert (xi >= lo).all() and (xi <= hi).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_finds_the_boundary_of_a_linear_model_and_nothing_closer(norm):
    # z0 - z1 = w.x + b; the nearest point of the other class is at distance margin / ||w||_dual.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(9, generator=g)
    x = torch.full((1, 1, 3, 3), 0.5)
    b = 0.3 - float(w @ x.flatten())  # margin 0.3 at x
    dual = float(w.abs().sum() if norm == "linf" else w.norm())
    exact = 0.3 / dual  # the box [0, 1] is not active: 0.5 +- exact stays inside for these draws
    assert exact < 0.5
    y = torch.zeros(1, dtype=torch.long)
    assert not pgd(Recorder(w, b), x, y, exact * 1.05, norm=norm, steps=50).robust.item()
    assert pgd(Recorder(w, b), x, y, exact * 0.95, norm=norm, steps=50, restarts=5).robust.item()


def test_rejects_bad_arguments():
    model = Recorder(torch.ones(4), 0.0)
    x, y = torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="eps >= 0"):
        pgd(model, x, y, -0.1)
