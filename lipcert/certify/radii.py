"""Perturbation radii as users write them: fractions like ``8/255``, and a check for radii that
were meant in pixel units (``--eps 8`` for 8/255) on data in [0, 1]."""

from __future__ import annotations

import math
import re

from torch import Tensor, nn

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
FRACTION = re.compile(rf"^\s*({_NUM})\s*/\s*({_NUM})\s*$")


def parse_radius(text: str) -> float:
    """``"0.1"``, ``"8/255"``, ``"inf"`` -> float; ValueError for anything else (a zero
    denominator included)."""
    m = FRACTION.match(text)
    if m:
        num, den = float(m.group(1)), float(m.group(2))
        if den == 0:
            raise ValueError(f"{text!r}: division by zero")
        return num / den
    return float(text)


def model_norm(model: nn.Module) -> str | None:
    """``"linf"`` or ``"l2"``: the norm the model's own certificate is in (None if unknown)."""
    kind = str(getattr(model, "certificate", ""))
    return "linf" if kind.startswith("linf") else "l2" if kind.startswith("l2") else None


def radius_problem(eps: float, norm: str | None, x: Tensor | None = None) -> str | None:
    """Why ``eps`` cannot be meant as a radius in raw input units of ``x`` (in ``norm``), or None.

    On data in [0, 1] an l-inf radius above 1 (or an l2 radius above the diameter sqrt(d) of the
    box) contains every input: nothing can be robust, and the likely intent was pixel units.
    """
    if x is not None and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        return None  # not [0, 1] data: no scale to compare with
    if norm == "linf":
        limit, what = 1.0, "1, the whole [0, 1] input range"
    elif norm == "l2" and x is not None and x.numel():
        d = x[0].numel()
        limit, what = math.sqrt(d), f"sqrt({d}) = {math.sqrt(d):.4g}, the diameter of the [0, 1] input box"
    else:
        return None
    if not eps > limit:
        return None
    hint = f"; did you mean {eps:g}/255 = {eps / 255:.4f}?" if math.isfinite(eps) else ""
    return (f"{norm} radius {eps:g} exceeds {what}: every input lies within it of every other, so nothing can be "
            f"robust. Radii are in raw [0, 1] input units{hint}")
