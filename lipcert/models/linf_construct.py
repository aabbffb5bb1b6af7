"""Architectures of the explicit constructions of Zhang22 §3 (weights set by :mod:`lipcert.analysis`).

Registered so that a constructed network can be saved and reloaded like any lipcert model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..nn import Flatten, InputNormalize, LinfDistLinear
from .linf import LinfDistNet
from .registry import register


@register("linf_nearest_neighbour")
def linf_nearest_neighbour(in_shape: Sequence[int], num_classes: int, widths: Sequence[int]) -> LinfDistNet:
    """Identity input normalisation, then l-inf-dist layers of ``widths`` with biases (no mean
    shift), then an output layer; the logits are the outputs themselves (negative nearest-neighbour
    distances, Zhang22 Eq. 4). All weights are zero until :func:`lipcert.analysis.nearest_neighbour_net`
    sets them."""
    d = int(math.prod(in_shape))
    layers = [InputNormalize([0.0] * int(in_shape[0]), 1.0), Flatten()]
    for width in widths:
        layers.append(LinfDistLinear(d, int(width), bias=True))
        d = int(width)
    layers.append(LinfDistLinear(d, num_classes, bias=True))
    for layer in layers:
        if isinstance(layer, LinfDistLinear):
            layer.weight.data.zero_()
    return LinfDistNet(*layers)
