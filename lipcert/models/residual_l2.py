"""An MLP of Fazlyab23 Prop. 3.1 residual layers (``resmlp_l2``), certified with LipLT pairwise bounds.

``InputNormalize, Flatten, Linear(d, width), ReLU, SqrtRhoResidual(width) x depth, Linear(width, K)``:
each residual layer is sqrt(rho_i)-Lipschitz by construction (Fazlyab23 Eq. 12), so the naive bound is
``||W_in|| prod sqrt(rho_i) ||W_out||``; ``lipcert.bounds.liplt`` reads the layers in the form of
Fazlyab23 Eq. 17 (H = sqrt(rho) I) and bounds the cascade more tightly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..nn.activations import ReLU
from ..nn.common import Flatten, InputNormalize
from ..nn.residual_l2 import SqrtRhoResidual
from .registry import register


class ResidualL2Net(nn.Sequential):
    """A sequence of layers taking raw [0, 1] inputs of shape ``in_shape``; certified in l2."""

    certificate = "l2_lipschitz"

    def __init__(self, *layers: nn.Module, in_shape: Sequence[int]) -> None:
        super().__init__(*layers)
        self.in_shape = tuple(int(s) for s in in_shape)


@register("resmlp_l2")
def resmlp_l2(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    width: int = 256,
    depth: int = 4,
    inner: int | None = None,
    rho: float = 1.0,
    learn_rho: bool = True,
    t_rule: str = "aol",
    mean: Sequence[float] = (0.0,),
    std: float | Sequence[float] = 1.0,
) -> ResidualL2Net:
    """``depth`` residual layers of Fazlyab23 Prop. 3.1 between a Linear stem and a Linear head."""
    if depth < 0 or width < 1:
        raise ValueError(f"resmlp_l2 needs width >= 1 and depth >= 0, got width={width}, depth={depth}")
    in_shape = tuple(int(s) for s in in_shape)
    mean = list(mean) if isinstance(mean, (list, tuple)) else [float(mean)]
    if len(mean) == 1 and in_shape[0] > 1:
        mean = mean * in_shape[0]
    layers: list[nn.Module] = [InputNormalize(mean, std), Flatten(), nn.Linear(math.prod(in_shape), width), ReLU()]
    layers += [SqrtRhoResidual(width, inner, "relu", rho, learn_rho, t_rule) for _ in range(depth)]
    layers.append(nn.Linear(width, num_classes))
    return ResidualL2Net(*layers, in_shape=in_shape)


__all__ = ["ResidualL2Net", "resmlp_l2"]
