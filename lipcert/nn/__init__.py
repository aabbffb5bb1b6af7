"""Layers: each knows its forward pass and its Lipschitz facts (``linf_lipschitz()``)."""

from .common import Flatten, InputNormalize, Negate
from .head import ScaledLinear
from .linf import IDENTITY_INIT_VALUE, LinfDistLinear, MeanShiftNorm, current_p, relaxed_p, set_p
from .linf_conv import LinfDistConv2d
from .linf_residual import LinfDistResidual
from .lse import lse_dist
from .pool import MaxPool2d
from .relaxation import RELAXATIONS

__all__ = [
    "Flatten",
    "IDENTITY_INIT_VALUE",
    "InputNormalize",
    "LinfDistConv2d",
    "LinfDistLinear",
    "LinfDistResidual",
    "MaxPool2d",
    "MeanShiftNorm",
    "Negate",
    "RELAXATIONS",
    "ScaledLinear",
    "current_p",
    "lse_dist",
    "relaxed_p",
    "set_p",
]
