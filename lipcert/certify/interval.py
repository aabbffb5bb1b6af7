"""Interval certificate for l-inf-dist nets: propagate the input box through the layers.

For a sample x and radius eps the box is ``[max(x - eps, 0), min(x + eps, 1)]`` (perturbed inputs
stay valid pixels, as PGD's are; inputs outside [0, 1] are refused). Each layer maps a box to a box: l-inf-dist layers with their
exact per-neuron range (:mod:`lipcert.nn.box`), mean shift / normalisation / negation /
flatten / max pooling monotonically. The sample is certified iff ``lower(z_y) > upper(z_j)`` for
every j != y.

Never looser than the margin certificate: over a box of radius rho around a point c, an
l-inf-dist neuron's exact range lies in ``[u(c) - rho, u(c) + rho]``, so by induction every logit
lies within ``L eps`` of its clean value and ``margin > 2 L eps`` implies certification (Zhang21
Fact 3.2); clipping to [0, 1] only shrinks boxes, which is where the interval bound gains
(as the authors certify this way).

Floating point: bounds are computed in float64; every layer widens its output box by a rigorous
bound on the rounding of its own bound computation (float64) *and* by its ``rounding_error`` for
float32 inference at the box's magnitudes, so the boxes also contain every float32 evaluation of
the network on valid inputs in the ball, and the final comparison accounts for its own rounding.

Radii. Without ``eps`` the radius is found by bisection: a bracket is found by doubling up until a
failure (capped at 1) or halving down until a success, then ``steps`` bisections; the reported
radius is the largest radius *verified* (the lower end of the bracket), so it is sound and within a
relative ``2^-steps`` of the interval method's own limit. With ``eps=[...]`` only those radii are tested (one pass each): the radius is the largest
verified test point ``eps_k * (1 + 2^-30)`` (just above eps_k, so ``radius > eps_k``; 2^-30 for eps_k = 0),
or 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..nn import Flatten, InputNormalize, MeanShiftNorm, Negate
from .checks import check_logits, check_unit_box, in_unit_box
from .dispatch import register_certifier
from .driver import BatchFn, Certifier, larger_radius
from .linf_chain import U32, U64, f32_may_overflow, param_absmax
from .margin import MARGIN, check_linf_chain, margin_batch
from .result import Certificate, CertificationError

#: Relative step above a requested eps at which the grid mode tests the box.
GRID_UP = 2.0**-30
#: Largest radius ever searched: at eps = 1 the box is all of [0, 1]^d.
CAP = 1.0


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _absmax(lo: Tensor, hi: Tensor) -> Tensor:
    return torch.maximum(lo.abs(), hi.abs()).flatten(1).amax(1)


def _base_rule(layer: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor] | None:
    """Interval maps of the monotone layers that do not carry an ``interval_bounds`` method."""
    if isinstance(layer, (Flatten, nn.Flatten)):
        return layer(lo), layer(hi)
    if isinstance(layer, nn.Identity):
        return lo, hi
    if isinstance(layer, Negate):
        return -hi, -lo
    if isinstance(layer, (InputNormalize, MeanShiftNorm)):
        if isinstance(layer, MeanShiftNorm) and layer.training:
            raise CertificationError("interval bounds need mean-shift layers in eval mode")
        a, b = layer(lo), layer(hi)  # affine per coordinate: the ends map to the ends, in an order
        lower, upper = torch.minimum(a, b), torch.maximum(a, b)  # set by the stored std's sign, not assumed
        err = layer.rounding_error(_absmax(lo, hi), _absmax(lower, upper), U64)
        return lower - _per_sample(err, lower), upper + _per_sample(err, upper)
    return None


def layer_interval(layer: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Box -> box for one layer, sound for the exact layer with a float64 computation."""
    out = _base_rule(layer, lo, hi)
    if out is not None:
        return out
    fn = getattr(layer, "interval_bounds", None)
    if fn is None:
        raise CertificationError(f"layer {type(layer).__name__} has no interval bounds; use the margin certificate")
    try:
        return fn(lo, hi, U64)
    except ValueError as err:
        raise CertificationError(str(err)) from None


@torch.no_grad()
def propagate_box(layers: Sequence[nn.Module], lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Propagate a float64 box through a chain; each box also contains float32 evaluations.
    Samples whose float32 evaluation could overflow get NaN boxes (never certified)."""
    pmax = param_absmax(list(layers))
    bad = torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
    for layer in layers:
        in_abs = _absmax(lo, hi)
        lo, hi = layer_interval(layer, lo, hi)
        out_abs = _absmax(lo, hi)
        bad |= f32_may_overflow(in_abs, out_abs, pmax)
        err32 = layer.rounding_error(in_abs, out_abs, U32)
        lo, hi = lo - _per_sample(err32, lo), hi + _per_sample(err32, hi)
    if bad.any():
        nan = torch.full_like(lo, math.nan)
        lo, hi = torch.where(_per_sample(bad, lo), nan, lo), torch.where(_per_sample(bad, hi), nan, hi)
    return lo, hi


def input_box(x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """``[x - eps, x + eps] ∩ [0, 1]`` in float64, rounded outward."""
    e = _per_sample(eps, x)
    slack = 2 * U64 * (x.abs() + e)
    return (x - e - slack).clamp(0.0, 1.0), (x + e + slack).clamp(0.0, 1.0)


@torch.no_grad()
def certified_by_interval(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
    """Boolean (B,): is sample b certified at radius eps[b] by interval propagation?"""
    lo, hi = propagate_box(layers, *input_box(x, eps))
    low_y = lo.gather(1, y[:, None])
    gap = low_y - hi - 2 * U64 * (low_y.abs() + hi.abs())
    gap = gap.scatter(1, y[:, None], math.inf)
    return (gap > 0).all(1)


def _search(layers, x, y, ok: Tensor, start: Tensor, steps: int) -> Tensor:
    """Largest verified radius >= start (or 0), per sample: a bracket [lo, hi] with lo verified and
    hi failed, found by doubling up from ``start`` (or from 1/256 when nothing is verified yet,
    halving down if that fails), then ``steps`` bisections, so hi / lo <= 1 + 2^-steps."""
    verified = torch.zeros_like(start)
    lo = start.clone()
    hi = torch.full_like(start, math.inf)
    ok = ok.clone()
    fresh = ok & (lo <= 0)
    if fresh.any():  # samples the slack alone defeats get radius 0 without a search
        idx = fresh.nonzero()[:, 0]
        ok[idx[~certified_by_interval(layers, x[idx], y[idx], torch.zeros(idx.numel(), dtype=start.dtype, device=start.device))]] = False
    if not ok.any():
        return verified

    def test(idx: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        good = certified_by_interval(layers, x[idx], y[idx], eps)
        return idx[good], idx[~good]

    cand = torch.where(lo > 0, 2 * lo, torch.full_like(lo, 1.0 / 256)).clamp_max(CAP)
    active = ok.clone()
    for _ in range(12):  # doubling up
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        passed, failed = test(idx, cand[idx])
        verified[passed] = lo[passed] = cand[passed]
        hi[failed] = cand[failed]
        active[failed] = False
        active[passed[cand[passed] >= CAP]] = False
        cand[passed] = (2 * cand[passed]).clamp_max(CAP)
    active = ok & (lo <= 0) & torch.isfinite(hi)
    for _ in range(40):  # halving down where the first candidate already failed
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        half = hi[idx] / 2
        passed, failed = test(idx, half)
        verified[passed] = lo[passed] = hi[passed] / 2
        hi[failed] = hi[failed] / 2
        active[passed] = False
    active = ok & (lo > 0) & torch.isfinite(hi)
    for _ in range(steps):  # bisection
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        mid = (lo[idx] + hi[idx]) / 2
        good = certified_by_interval(layers, x[idx], y[idx], mid)
        lo[idx[good]] = mid[good]
        verified[idx[good]] = mid[good]
        hi[idx[~good]] = mid[~good]
    return verified


def _grid(layers, x, y, ok: Tensor, eps_list: Sequence[float], skip_below: Tensor) -> Tensor:
    verified = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for e in sorted(float(v) for v in eps_list):
        test = e * (1 + GRID_UP) if e > 0 else GRID_UP  # eps = 0: a tiny positive radius, so radius > 0
        sel = (ok & (skip_below <= e) & (verified < test)).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        good = certified_by_interval(layers, x[sel], y[sel], torch.full((sel.numel(),), test, dtype=torch.float64, device=x.device))
        verified[sel[good]] = test
    return verified


def _check_interval(model: nn.Module, x: Tensor, **_options) -> None:
    check_unit_box(x)
    if getattr(model, "certificate", None) != "linf_margin":
        raise CertificationError(f"the interval certificate is for l-inf-dist chains; {type(model).__name__} is not one")
    check_linf_chain(model)


@torch.no_grad()
def interval_batch(layers: list[nn.Module], x: Tensor, y: Tensor, eps: list[float] | None, steps: int,
                   start: Tensor | None) -> Certificate:
    """The interval certificate of one float64 batch: bisection (``eps`` None) or the grid ``eps``,
    above the radii ``start`` (per sample, already verified; None: 0)."""
    h = x
    for layer in layers:
        h = layer(h)
    check_logits(h, y)
    pred = h.argmax(1)
    ok = pred == y
    st = torch.zeros(len(y), dtype=torch.float64, device=x.device) if start is None else start.to(x.device, torch.float64)
    r = _search(layers, x, y, ok, st, steps) if eps is None else _grid(layers, x, y, ok, eps, st)
    return Certificate(radius=r.cpu(), prediction=pred.cpu(), label=y.cpu(), norm="linf", method="linf_interval",
                       bound="upper")


def _interval_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                    steps: int = 10, start: Tensor | None = None) -> BatchFn:
    layers = list(model64.children())
    grid = list(eps) if eps else None  # an empty list (e.g. the per-epoch evaluation) means: search
    return lambda xb, yb, rows: interval_batch(layers, xb, yb, grid, steps, None if start is None else start[rows])


#: The interval certificate alone (``start``: per-sample radii already verified by another sound
#: certificate; the search only tests radii above them).
INTERVAL = Certifier("interval", "linf", _interval_setup, check=_check_interval)


def interval(
    model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, steps: int = 10, batch_size: int = 500,
    start: Tensor | None = None,
) -> Certificate:
    """Certified l-inf radii of an l-inf-dist chain by interval propagation (see module docstring).

    ``start`` (optional, per sample): radii already verified by another sound certificate; the
    search only tests radii above them (used by :func:`best`).
    """
    return INTERVAL(model, x, y, batch_size=batch_size, eps=eps, steps=steps, start=start)


def has_interval_rules(layers: Sequence[nn.Module], x: Tensor) -> bool:
    """Can the chain be propagated by intervals? Probed once on the point box of ``x`` (one float64
    input): every layer's rule either applies or is missing (e.g. LSE layers at finite p have none)."""
    try:
        propagate_box(layers, x, x)
    except (CertificationError, RuntimeError, IndexError):
        return False  # a model that cannot run on x fails in the margin batch with a clear error
    return True


def _best_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                steps: int = 10) -> BatchFn:
    layers = list(model64.children())
    device = next(model64.parameters()).device
    if not in_unit_box(x) or not has_interval_rules(layers, x[:1].to(device, torch.float64)):
        # the interval certificate clips the ball to [0, 1], and needs a rule for every layer: the margin stands
        return lambda xb, yb, rows: margin_batch(layers, xb, yb)
    grid = list(eps) if eps else None

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        m = margin_batch(layers, xb, yb)
        iv = interval_batch(layers, xb, yb, grid, steps, start=m.radius)
        return larger_radius(m, iv, "linf_margin+interval",
                             {**m.extra, "margin_radius": m.radius, "interval_radius": iv.radius})

    return batch


#: Margin and interval certificates together (the default of l-inf-dist chains).
BEST = Certifier("margin+interval", "linf", _best_setup, check=check_linf_chain)


def best(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, steps: int = 10, batch_size: int = 500) -> Certificate:
    """Margin and interval certificates together; each sample gets the larger verified radius (the
    default certificate of l-inf-dist chains). Inputs outside [0, 1] get the margin alone, as do
    chains with a layer that has no interval rule (e.g. LSE layers at finite p).

    The interval search starts above the margin radius (only samples the margin does not already
    certify at a requested eps are propagated), so this costs little more than the margin alone
    when the margin certifies most samples. ``extra`` holds ``margin_radius`` and
    ``interval_radius`` (the latter 0 where the interval method verified nothing beyond the margin).
    """
    return BEST(model, x, y, batch_size=batch_size, eps=eps, steps=steps)


register_certifier("linf_margin", BEST)  # the default: the best sound certificate (the margin stays by name)
register_certifier("linf_margin", INTERVAL, method="interval")
register_certifier("linf_margin", BEST, method="best")
register_certifier("linf_margin", MARGIN, method="margin", fast=True)
