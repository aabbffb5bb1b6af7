"""Max pooling with its l-inf facts (used between l-inf-dist convolutions, EMAReport §2.1).

``|max_i a_i - max_i b_i| <= max_i |a_i - b_i|``, so max pooling is 1-Lipschitz w.r.t. l-inf;
it is exact in floating point (a selection) and monotone, so boxes map to boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that states its l-inf Lipschitz constant, rounding error and interval map."""

    def linf_lipschitz(self) -> float:
        return 1.0

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        return torch.zeros_like(out_absmax)  # a selection is exact

    def interval_bounds(self, lo: Tensor, hi: Tensor, unit: float = 0.0) -> tuple[Tensor, Tensor]:
        """Max pooling is monotone: the box [lo, hi] maps to [pool(lo), pool(hi)] (exact)."""
        return super().forward(lo), super().forward(hi)

