"""Floating-point facts every sound bound rests on: unit roundoff, Higham's gamma_n, outward
rounding, and the float64 evaluation copy of a model.

Certificates are theorems about the stored tensors evaluated in real arithmetic (and, where a
certifier says so, about their float32 inference). The gap between computed and exact values is
bounded with the standard model of floating-point arithmetic (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., 2002, §2.2 and Lemma 3.1): every basic operation is exact up to a
relative error ``u`` (the unit roundoff), and an n-term dot product in any summation order is off
by at most ``gamma_n = n u / (1 - n u)`` relative to the sum of the absolute products.

``nn``, ``bounds`` and ``certify`` take these from here and nowhere else.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

#: unit roundoff of IEEE binary64 (round to nearest): 2^-53
U64 = 2.0**-53
#: unit roundoff of IEEE binary32: 2^-24
U32 = 2.0**-24
#: magnitudes below this cannot overflow float32 (largest finite value ~2^128) in one step of a layer
F32_SAFE = 2.0**126


def gamma(n: int, unit: float = U64) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (Lemma 3.1): the relative error bound of n chained
    roundings, e.g. an n-term dot product in any order. Refuses n u >= 1/2 (no longer small)."""
    if n * unit >= 0.5:
        raise ValueError(f"gamma_{n} is not small in unit roundoff {unit}")
    return n * unit / (1 - n * unit)


def round_up(value: float, ulps: int = 4) -> float:
    """``value`` moved up by ``ulps`` units in the last place (outward rounding of a final result)."""
    for _ in range(ulps):
        value = math.nextafter(value, math.inf)
    return value


def outward(lo: Tensor, hi: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Widen a float64 interval by 4 u relative (plus 1e-300 absolute, for underflow) where
    ``active`` (everywhere when None): the enclosure of one more rounded operation on each end."""
    tiny = 1e-300
    dlo, dhi = 4 * U64 * lo.abs() + tiny, 4 * U64 * hi.abs() + tiny
    if active is not None:
        dlo, dhi = dlo * active, dhi * active
    return lo - dlo, hi + dhi


def float64_copy(model: nn.Module, device: torch.device | str | None = None, frozen: bool = False,
                 dtype: torch.dtype = torch.float64) -> nn.Module:
    """An eval-mode float64 (or ``dtype``) deep copy of ``model`` (on ``device`` when given) for
    sound evaluation.

    The copy keeps the model's ``in_shape`` attribute; with ``frozen`` its parameters do not
    require gradients. The original is untouched.
    """
    in_shape = getattr(model, "in_shape", None)
    out = copy.deepcopy(model)
    out = out.to(dtype) if device is None else out.to(device=device, dtype=dtype)
    out.eval()
    if frozen:
        for p in out.parameters():
            p.requires_grad_(False)
    if in_shape is not None and getattr(out, "in_shape", None) is None:
        out.in_shape = in_shape
    return out


__all__ = ["F32_SAFE", "U32", "U64", "float64_copy", "gamma", "outward", "round_up"]
