"""Layers: each knows its forward pass and its Lipschitz facts (``linf_lipschitz()``)."""

from .common import Flatten, InputNormalize, Negate
from .linf import IDENTITY_INIT_VALUE, LinfDistLinear, MeanShiftNorm, current_p, set_p

__all__ = [
    "Flatten",
    "IDENTITY_INIT_VALUE",
    "InputNormalize",
    "LinfDistLinear",
    "MeanShiftNorm",
    "Negate",
    "current_p",
    "set_p",
]
