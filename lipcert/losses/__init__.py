"""Losses: each takes logits (and, for l2 methods, bounds) and returns a scalar."""

from .linf import accuracy, clipped_hinge_loss, hinge_loss, margin, mixed_loss

__all__ = ["accuracy", "clipped_hinge_loss", "hinge_loss", "margin", "mixed_loss"]
