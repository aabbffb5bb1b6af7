"""Activations for l2 Lipschitz networks (Huang21 §3.2-3.3), each with its interval and mask rules.

Every activation here is 1-Lipschitz in l2 and states three facts the bounds in
``lipcert.bounds`` rely on:

* ``box(lo, hi)`` -- interval rule: bounds of the output given elementwise bounds of the input.
* ``varying(lo, hi) -> (in_mask, out_mask)`` -- which outputs can change when the input moves
  inside the box (``out_mask``, Huang21 Eq. 3 / 9; constant outputs delete the *columns* of the next
  weight matrix) and which inputs those varying outputs depend on (``in_mask``; inputs outside it
  delete the *rows* of the previous weight matrix). For elementwise activations both masks are
  the same. Soundness: inside the box, the activation equals
  ``out_mask * g(in_mask * z) + constant`` with g 1-Lipschitz, which is what Huang21 Eq. 4 / 10 need.
* ``sparsity_gaps(lo, hi) -> (dead_gap, sat_gap)`` -- the hinge arguments of the sparsity loss
  (Huang21 Eq. 12): positive ``dead_gap`` means the lower constant region is not reached yet, positive
  ``sat_gap`` that the upper (clipped) one is not.

``error_rule(err)`` maps an elementwise bound on an input error to one on the output error (used
by the floating-point slack of the certificate). ``project_()`` restores parameter constraints
after an optimiser step (thresholds >= 0, as the authors' code does for ReLU-theta).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import elementwise


class Activation(nn.Module):
    """Base class: 1-Lipschitz (l2) activation with interval, mask and sparsity rules."""

    #: l2 Lipschitz constant of the activation.
    lipschitz: float = 1.0

    def box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sparsity_gaps(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:  # pragma: no cover
        raise NotImplementedError

    def error_rule(self, err: Tensor) -> Tensor:
        """Elementwise rounding-error bound of the output given one of the input (1-Lipschitz
        elementwise maps keep it; exact operations add nothing)."""
        return err

    @torch.no_grad()
    def project_(self) -> None:
        """Project parameters back onto their constraint set (no-op by default)."""


def _thresholds(shape: Sequence[int] | int, init: float) -> nn.Parameter:
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    return nn.Parameter(torch.full(shape, float(init)))


class ReLU(Activation):
    """``max(z, 0)``; an output varies iff its upper bound is > 0 (Huang21 Eq. 3)."""

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(z)

    def box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return F.relu(lo), F.relu(hi)

    def varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        m = (hi > 0) & (hi > lo)
        return m, m

    def sparsity_gaps(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:
        return hi, None


class ReLUTheta(Activation):
    """ReLU clipped at a learnable per-neuron threshold: ``min(max(z, 0), theta)`` (Huang21 Eq. 8).

    ``shape`` is the feature shape (e.g. (C, H, W): one threshold per element, as the authors'
    code). An output varies iff ``UB > 0 and LB < theta`` (Huang21 Eq. 9). Thresholds are projected
    to >= 0 after every optimiser step (authors' code; see ``project_``).
    """

    def __init__(self, shape: Sequence[int] | int, theta_init: float = 1.0) -> None:
        super().__init__()
        self.theta = _thresholds(shape, theta_init)

    def forward(self, z: Tensor) -> Tensor:
        return elementwise.minimum(F.relu(z), self.theta.to(z.dtype))

    def box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        th = self.theta.to(lo.dtype)
        return elementwise.minimum(F.relu(lo), th), elementwise.minimum(F.relu(hi), th)

    def varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        th = self.theta.detach().to(lo.dtype)
        m = (hi > 0) & (lo < th) & (hi > lo)
        return m, m

    def sparsity_gaps(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:
        return hi, self.theta.to(lo.dtype) - lo

    @torch.no_grad()
    def project_(self) -> None:
        self.theta.clamp_(min=0.0)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.theta.shape)}"


def _halves(z: Tensor) -> tuple[Tensor, Tensor]:
    c = z.shape[1]
    if c % 2:
        raise ValueError(f"MaxMin needs an even number of channels/features, got {c}")
    return z[:, : c // 2], z[:, c // 2 :]


class MaxMin(Activation):
    """MaxMin (Anil et al. 2019): channels split into halves (x1, x2) -> (max(x1, x2), min(x1, x2)).

    A pair sort is 1-Lipschitz (it is a permutation on each side of x1 = x2 and continuous).
    Outputs vary unless their interval is a single point; a pair's two inputs both matter when
    either of its outputs varies.
    """

    def forward(self, z: Tensor) -> Tensor:
        a, b = _halves(z)
        # at a tie the max output's gradient goes to a, the min output's to b: the Jacobian stays a permutation
        return torch.cat([elementwise.maximum(a, b), elementwise.minimum(b, a)], dim=1)

    def _max_min_box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lo1, lo2 = _halves(lo)
        hi1, hi2 = _halves(hi)
        mx, mn = elementwise.maximum, elementwise.minimum
        return mx(lo1, lo2), mx(hi1, hi2), mn(lo2, lo1), mn(hi2, hi1)

    def _clip(self, lmax: Tensor, umax: Tensor, lmin: Tensor, umin: Tensor):
        return lmax, umax, lmin, umin

    def box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        lmax, umax, lmin, umin = self._clip(*self._max_min_box(lo, hi))
        return torch.cat([lmax, lmin], dim=1), torch.cat([umax, umin], dim=1)

    def _out_varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        lmax, umax, lmin, umin = self._max_min_box(lo, hi)
        return umax > lmax, umin > lmin

    def varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        vmax, vmin = self._out_varying(lo, hi)
        pair = vmax | vmin
        return torch.cat([pair, pair], dim=1), torch.cat([vmax, vmin], dim=1)

    def sparsity_gaps(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:
        raise ValueError("unclipped MaxMin has no constant region; the sparsity loss needs clipped_maxmin")

    def error_rule(self, err: Tensor) -> Tensor:
        """|max(a,b) - max(a',b')| <= max(|a-a'|, |b-b'|), the same for min."""
        e1, e2 = _halves(err)
        e = torch.maximum(e1, e2)
        return torch.cat([e, e], dim=1)


class ClippedMaxMin(MaxMin):
    """Huang21 §3.3: ``(min(max(x1, x2), a), max(min(x1, x2), b))`` with learnable per-element a, b.

    ``shape`` is the shape of one half (C/2, ...). The max output is constant where its lower
    bound is >= a, the min output where its upper bound is <= b (Huang21 §3.3); a pair's inputs can
    only be deleted when both its outputs are constant. Clipping keeps the map 1-Lipschitz.
    ``project_`` keeps a >= 0 >= b (lipcert's choice, mirroring ReLU-theta's theta >= 0; the paper
    states no constraint). ``a`` starts at ``theta_init``, ``b`` at ``lower_init`` (default
    ``-theta_init``; the authors' code starts some layers asymmetric, e.g. a = 0.1, b = -0.15).
    The bounds read the stored a and b whatever their values, so certificates hold for any
    thresholds a file holds.
    """

    def __init__(self, shape: Sequence[int] | int, theta_init: float = 1.0, lower_init: float | None = None) -> None:
        super().__init__()
        self.upper = _thresholds(shape, theta_init)  # a
        self.lower = _thresholds(shape, -theta_init if lower_init is None else lower_init)  # b

    def forward(self, z: Tensor) -> Tensor:
        a, b = _halves(z)
        mx = elementwise.minimum(elementwise.maximum(a, b), self.upper.to(z.dtype))
        mn = elementwise.maximum(elementwise.minimum(b, a), self.lower.to(z.dtype))
        return torch.cat([mx, mn], dim=1)

    def _clip(self, lmax, umax, lmin, umin):
        up, low = self.upper.to(lmax.dtype), self.lower.to(lmax.dtype)
        mn, mx = elementwise.minimum, elementwise.maximum
        return mn(lmax, up), mn(umax, up), mx(lmin, low), mx(umin, low)

    def _out_varying(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        lmax, umax, lmin, umin = self._max_min_box(lo, hi)
        up, low = self.upper.detach().to(lo.dtype), self.lower.detach().to(lo.dtype)
        return (umax > lmax) & (lmax < up), (umin > lmin) & (umin > low)

    def sparsity_gaps(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor | None]:
        """Huang21 Eq. 12: ``max(0, UB_min - b)`` and ``max(0, a - LB_max)``."""
        lmax, _, _, umin = self._max_min_box(lo, hi)
        return umin - self.lower.to(lo.dtype), self.upper.to(lo.dtype) - lmax

    @torch.no_grad()
    def project_(self) -> None:
        self.upper.clamp_(min=0.0)
        self.lower.clamp_(max=0.0)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.upper.shape)}"


ACTIVATIONS = {"relu": ReLU, "relu_theta": ReLUTheta, "maxmin": MaxMin, "clipped_maxmin": ClippedMaxMin}


def make_activation(name: str, shape: Sequence[int], theta_init: float | Sequence[float] = 1.0) -> Activation:
    """Activation ``name`` for features of ``shape`` (C, ...) (thresholds per element).

    ``theta_init``: the initial threshold (ReLU-theta's theta; clipped MaxMin's a, with b = -a), or
    for clipped MaxMin a pair ``(a, b)``.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; available: {sorted(ACTIVATIONS)}")
    pair = isinstance(theta_init, (list, tuple))
    if pair and (name != "clipped_maxmin" or len(theta_init) != 2):
        raise ValueError(f"a threshold pair (a, b) is for clipped_maxmin only, got {theta_init!r} for {name}")
    values = [float(v) for v in theta_init] if pair else [float(theta_init)]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"thresholds must be finite, got {theta_init!r}")
    shape = tuple(int(s) for s in shape)
    if name in ("maxmin", "clipped_maxmin") and shape[0] % 2:
        raise ValueError(f"{name} needs an even number of channels/features, got shape {shape}")
    if name == "relu":
        return ReLU()
    if name == "relu_theta":
        return ReLUTheta(shape, theta_init)
    if name == "maxmin":
        return MaxMin()
    return ClippedMaxMin((shape[0] // 2, *shape[1:]), values[0], values[1] if pair else None)


__all__ = ["ACTIVATIONS", "Activation", "ClippedMaxMin", "MaxMin", "ReLU", "ReLUTheta", "make_activation"]
