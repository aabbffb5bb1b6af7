"""Smooth gradients for attacking l-inf-dist nets: the values of the model, the gradient of its l_p
relaxation at a finite p.

The input gradient of an ``||x - w||_inf`` neuron has a single non-zero coordinate, so gradient
attacks on l-inf-dist nets (p = inf) see a sparse, nearly uninformative direction. The l_p
distance at finite p (the relaxation these nets are trained through, Zhang22 §4) is a smooth
approximation with dense gradients. :class:`SmoothGradient` returns exactly the model's logits
(``z + (s - s.detach())`` adds a zero to the detached logits z) while backpropagating through the relaxed copy ``s``, so an
attack driven by it still judges every iterate by the real model: a sample counts as broken only
if the real model misclassifies it.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ..nn import current_p, set_p


class SmoothGradient(nn.Module):
    """``model``'s logits with the gradient of ``model`` at l_p exponent ``p``."""

    def __init__(self, model: nn.Module, p: float):
        super().__init__()
        self.model = model
        self.relaxed = copy.deepcopy(model)
        set_p(self.relaxed, p)
        self.relaxed.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = self.model(x)
        s = self.relaxed(x)
        return z + (s - s.detach())


def smooth_gradient(model: nn.Module, p: float | None) -> nn.Module:
    """:class:`SmoothGradient` for models whose l_p-distance layers are at p = inf; ``model``
    itself for other models (no l_p-distance layers, already finite p) or ``p`` None."""
    if p is None or not math.isfinite(p) or current_p(model) != math.inf:
        return model
    return SmoothGradient(model, p)
