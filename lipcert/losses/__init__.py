"""Losses: each takes logits (and, for l2 methods, bounds) and returns a scalar."""

from .l2 import (bcp_worst_logits, certified_radius, gloro_logits, gloro_trades_loss, lmt_worst_logits, pairwise_from,
                 pairwise_worst_logits, robust_mixture_loss, sparsity_loss)
from .linf import accuracy, clipped_hinge_loss, hinge_loss, margin, mixed_loss

__all__ = [
    "accuracy",
    "bcp_worst_logits",
    "certified_radius",
    "clipped_hinge_loss",
    "gloro_logits",
    "gloro_trades_loss",
    "hinge_loss",
    "lmt_worst_logits",
    "margin",
    "mixed_loss",
    "pairwise_from",
    "pairwise_worst_logits",
    "robust_mixture_loss",
    "sparsity_loss",
]
