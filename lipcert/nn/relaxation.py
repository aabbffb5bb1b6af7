"""Which smooth surrogate of the l-inf distance a layer uses at finite p, and its Lipschitz facts.

* ``"lp"``: ``||x - w||_p`` (Zhang21 §5), ``D^(1/p)``-Lipschitz w.r.t. l-inf (Zhang22 Prop. 4.1).
* ``"lse"``: ``(1/p) log sum_i exp(p |x_i - w_i|)`` (EMAReport Eq. 6), 1-Lipschitz w.r.t. l-inf for
  every p > 0 (see :mod:`lipcert.nn.lse`), so margin certificates hold during training too.

At p = inf both are the exact l-inf distance.
"""

from __future__ import annotations

import math

from torch import Tensor

from .kernels import lp_dist
from .lse import lse_dist, lse_rounding_error

RELAXATIONS = ("lp", "lse")


def check_relaxation(relaxation: str) -> str:
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    return relaxation


def neuron_distance(x: Tensor, w: Tensor, p: float, relaxation: str = "lp") -> Tensor:
    """Distance matrix (B, N) of rows of x (B, D) to rows of w (N, D) under the given relaxation."""
    if relaxation == "lse" and not math.isinf(p):
        return lse_dist(x, w, p)
    return lp_dist(x, w, p)


def is_one_lipschitz(p: float, relaxation: str = "lp") -> bool:
    """True when the neuron is exactly 1-Lipschitz w.r.t. l-inf as evaluated (p = inf, or LSE)."""
    return math.isinf(p) or relaxation == "lse"


def distance_lipschitz(in_features: int, p: float, relaxation: str = "lp") -> float:
    """l-inf Lipschitz constant of one neuron: 1 (p = inf or LSE), else ``D^(1/p)`` (Zhang22 Prop. 4.1)."""
    if is_one_lipschitz(p, relaxation):
        return 1.0
    return float(in_features) ** (1.0 / p)


def distance_rounding_error(
    in_features: int, p: float, relaxation: str, in_absmax: Tensor, w_max: float, out_absmax: Tensor, unit: float
) -> Tensor:
    """Bound on |computed - exact| output of a distance neuron plus bias (l-inf over outputs).

    p = inf: ``fl(x_i - w_i)`` is off by ``unit * (|x|max + |w|max)``; abs and max are exact; the
    bias add is off by ``unit * |out|``; a factor 2 covers second-order terms. LSE: see
    :func:`lipcert.nn.lse.lse_rounding_error`. The l_p relaxation at finite p has no bound here
    (certificates refuse it).
    """
    if math.isinf(p):
        return 2.0 * unit * (in_absmax + w_max + out_absmax)
    if relaxation == "lse":
        return lse_rounding_error(in_features, p, in_absmax, w_max, out_absmax, unit)
    raise ValueError("rounding_error is only defined for p = inf or the 'lse' relaxation")
