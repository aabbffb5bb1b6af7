"""Conventional layers for the MLP head of hybrid "l-inf-dist Net + MLP" models (Zhang21 code, EMAReport Table 1).

The head is *not* 1-Lipschitz; hybrid models are certified by interval arithmetic through it
(:mod:`lipcert.certify.hybrid`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ScaledLinear(nn.Module):
    """``y = (x @ W^T) / sqrt(in_features) + b`` with W initialised standard Gaussian, b = 0.

    The same function class as ``nn.Linear``, parameterised as in the authors' code so that Adam
    at the l-inf-dist learning rates (0.01 - 0.03) moves the effective weights
    ``W / sqrt(in_features)`` at a sensible pace.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight) * self.scale
        return y if self.bias is None else y + self.bias

    def effective_weight(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``W * scale`` in ``dtype`` (the matrix the layer applies)."""
        return self.weight.detach().to(dtype) * self.scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
