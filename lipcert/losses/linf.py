"""Losses for 1-Lipschitz (l-inf) nets: functions of logits only.

* :func:`hinge_loss` -- multi-class hinge with threshold theta (Zhang21 Eq. 6 / Zhang22 Eq. 5).
* :func:`clipped_hinge_loss` -- ``min(hinge(z / theta), 1)`` (Zhang22 Eq. 7, second term).
* :func:`mixed_loss` -- ``lam * CE(s * z) + clipped hinge`` (Zhang22 Eq. 7).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{i != y} z_i`` per sample (negative when misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(dim=1)


def hinge_loss(logits: Tensor, y: Tensor, theta: float, mix: float = 1.0) -> Tensor:
    """``mean(max(theta - margin, 0))`` (Zhang22 Eq. 5; Zhang21 Eq. 6 with t = theta).

    Zero iff every sample has margin >= theta, i.e. is certified at eps = theta / 2 by a
    1-Lipschitz net (Zhang21 Fact 3.2). ``mix < 1`` is the 2021 code's combination
    ``mix * max-hinge + (1 - mix) * mean-hinge``, the mean taken over all K columns of
    ``max(theta + z_j - z_y, 0)`` with the true class's column 0 (the code's default mix: 0.75).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"hinge mix must be in [0, 1], got {mix}")
    loss = F.relu(theta - margin(logits, y)).mean()
    if mix == 1.0:
        return loss
    terms = F.relu(theta + logits - logits.gather(1, y[:, None])).scatter(1, y[:, None], 0.0)
    return mix * loss + (1.0 - mix) * terms.mean()


def clipped_hinge_loss(logits: Tensor, y: Tensor, theta: float) -> Tensor:
    """``mean(min(max(1 - margin / theta, 0), 1))``: Zhang22 Eq. 7's clipped hinge on ``z / theta``.

    theta is the margin the loss asks for (Zhang22 Table 3 "hinge threshold"; = 2 eps_train).
    It plateaus at 1 for misclassified samples, so it only pushes correct ones past theta.
    """
    if theta <= 0:
        raise ValueError(f"hinge threshold theta must be > 0, got {theta}")
    return (1.0 - margin(logits, y) / theta).clamp(0.0, 1.0).mean()


def mixed_loss(logits: Tensor, y: Tensor, temperature: Tensor | float, lam: float, theta: float) -> Tensor:
    """Zhang22 Eq. 7: ``lam * CE(s * z, y) + min(hinge(z / theta, y), 1)``.

    ``temperature`` is the learnable scalar s (initialised to 1, trained at lr / 5, Zhang22 App. B);
    ``lam`` decays from lam0 to ~0 during the l_p phase and is 0 at p = inf.
    """
    loss = clipped_hinge_loss(logits, y, theta)
    if lam > 0:
        loss = loss + lam * F.cross_entropy(logits * temperature, y)
    return loss


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of samples whose argmax is the label."""
    return (logits.argmax(dim=1) == y).float().mean().item() if y.numel() else float("nan")


__all__ = ["accuracy", "clipped_hinge_loss", "hinge_loss", "margin", "mixed_loss"]
