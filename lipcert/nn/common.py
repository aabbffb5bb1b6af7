"""Small layers every model family uses, each with its Lipschitz facts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel, inside the model so checkpoints take raw [0, 1] inputs.

    Its l-inf (and l2) Lipschitz constant is ``1 / min |std|``; certificates divide by it, so radii
    are always reported in raw input units. The constructor refuses ``std <= 0``, but a state dict
    loaded from a file can hold any values, so nothing downstream assumes a sign: the constant
    uses ``|std|``, interval rules take the min / max of the two mapped ends (a negative std swaps
    them), and :meth:`check_certifiable` refuses a std that is 0 (not Lipschitz).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float] | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if std_t.numel() == 1:
            std_t = std_t.expand(mean_t.numel()).clone()
        if std_t.numel() != mean_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} channels but std has {std_t.numel()}")
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"expected input (B, {self.mean.numel()}, ...), got shape {tuple(x.shape)}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def linf_lipschitz(self) -> float:
        """``1 / min |std|``: the largest per-coordinate scale (computed in float64; ``inf`` if a std
        is 0). Valid for any sign of the stored std."""
        smallest = float(self.std.detach().abs().min()) if self.std.numel() else 1.0
        return math.inf if smallest == 0.0 else 1.0 / smallest

    def check_certifiable(self) -> None:
        """Raise ``ValueError`` if the stored tensors do not define a Lipschitz map (std = 0, or not
        finite, or a mean / std shape the layer cannot apply). Certificates call this on the tensors
        they certify, whatever the constructor checked when the layer was built."""
        if self.mean.dim() != 1 or self.std.shape != self.mean.shape:
            raise ValueError(f"InputNormalize has mean of shape {tuple(self.mean.shape)} and std of shape {tuple(self.std.shape)}")
        if not torch.isfinite(self.std).all() or not torch.isfinite(self.mean).all():
            raise ValueError(f"InputNormalize mean / std are not finite: mean={self.mean.tolist()}, std={self.std.tolist()}")
        if (self.std == 0).any():
            raise ValueError(f"InputNormalize std contains 0 ({self.std.tolist()}): (x - mean) / std is not Lipschitz")

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        """Bound on |computed - exact| output (l-inf) for unit roundoff ``unit``: one subtraction
        and one division, each off by at most ``unit`` relative to the output."""
        return 3.0 * unit * out_absmax

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Negate(nn.Module):
    """``-x``: logits of l-inf-dist nets are negated distances (a class scores high when close)."""

    def forward(self, x: Tensor) -> Tensor:
        return -x

    def linf_lipschitz(self) -> float:
        return 1.0

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        return torch.zeros_like(out_absmax)  # negation is exact


class Flatten(nn.Flatten):
    """``nn.Flatten`` that states its (trivial) Lipschitz constant."""

    def linf_lipschitz(self) -> float:
        return 1.0

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        return torch.zeros_like(out_absmax)  # a reshape is exact
