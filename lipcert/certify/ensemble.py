"""Certificate for ensembles that average their members' logits (EMAReport §2.4, Lemma A.2).

All members 1-Lipschitz chains (l-inf-dist nets): the average of L_i-Lipschitz logits is
(mean L_i)-Lipschitz, so the margin certificate applies to the averaged logits,
``radius = margin(Z) / (2 mean L_i)``, with the members' rigorous rounding bounds averaged and the
rounding of the average itself added (float64 here and float32 inference).

Some members hybrids ("Net + MLP"): each member gives lower bounds of its own ``z_y - z_j`` over
the ball (hybrids by interval arithmetic through the head, :mod:`lipcert.certify.hybrid`;
1-Lipschitz members by ``z_y - z_j - 2 L eps``); the ensemble's bound is their average ("sum of
their interval bounds", EMAReport's code averaged per-member worst-case margins too). The radius is
found by the same bisection as for hybrids (tolerance 1e-5 raw pixel units, lower end reported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bounds.hybrid_head import gamma
from .checks import check_logits, in_unit_box
from .dispatch import register_certifier
from .driver import BatchFn, Certifier, larger_radius
from .hybrid import CAP, HybridBounds, _Features, bisect_radius
from .interval import input_box, propagate_box
from .linf_chain import F32_SAFE, U32, U64, chain_layers, chain_lipschitz, forward_with_absmax, rounding_bound
from .result import Certificate, CertificationError

SUPPORTED = ("linf_margin", "linf_hybrid")


def _check_members(model: nn.Module, x: Tensor | None = None, **_options) -> None:
    members_of(model)


def members_of(model: nn.Module, role: str = "ensemble") -> list[nn.Module]:
    """``model.members``, each of a certificate kind in ``SUPPORTED`` (else a CertificationError
    naming the ``role`` the member plays: "ensemble" or "voting")."""
    members = list(getattr(model, "members", []))
    if not members:
        raise CertificationError(f"{type(model).__name__} is not an ensemble (needs .members)")
    for m in members:
        kind = getattr(m, "certificate", None)
        if kind not in SUPPORTED:
            raise CertificationError(f"{role} member {type(m).__name__} has certificate {kind!r}; supported: {SUPPORTED}")
    return members


def _margin_of(logits: Tensor, y: Tensor) -> Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], -math.inf).amax(1)


@torch.no_grad()
def _all_margin_batch(chains: list[list[nn.Module]], lips: list[float], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    m = len(chains)
    outs = [forward_with_absmax(layers, x) for layers in chains]
    zs = [z for z, _ in outs]
    big_z = torch.stack(zs).mean(0)
    check_logits(big_z, y)
    lip = sum(lips) / m
    pred = big_z.argmax(1)
    margin = _margin_of(big_z, y)
    r_cap = margin.clamp_min(0) / (2 * lip)
    errs = [rounding_bound(layers, absmax, r_cap) for layers, (_, absmax) in zip(chains, outs)]
    mags = [absmax[-1][1] + r_cap * li + e for (_, absmax), li, e in zip(outs, lips, errs)]
    max_mag = torch.stack(mags).amax(0)
    avg_err = (gamma(m + 2, U64) + gamma(m + 2, U32)) * max_mag
    avg_err = torch.where(m * max_mag < F32_SAFE, avg_err, math.inf)  # the float32 sum could overflow
    err = torch.stack(errs).mean(0) * (1 + 4 * U64) + avg_err
    margin_low = margin - 2 * err - 2 * U64 * margin.abs()
    radius = (margin_low.clamp_min(0) / (2 * lip)) * (1 - 8 * U64)
    radius = torch.where(pred == y, radius, torch.zeros_like(radius))
    return radius, pred, margin


class _MarginMember:
    """Lower bounds of z_y - z_j of a 1-Lipschitz member over the ball: ``diff - 2 L eps - 2 err``."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = chain_layers(model)
        self.lipschitz = chain_lipschitz(self.layers)

    @torch.no_grad()
    def prepare(self, x: Tensor):
        z, absmax = forward_with_absmax(self.layers, x)
        err = rounding_bound(self.layers, absmax, torch.full((x.shape[0],), CAP, dtype=x.dtype, device=x.device))
        mag = absmax[-1][1] + CAP * self.lipschitz + err
        return z, err, mag

    def lower_bounds(self, prep, idx: Tensor, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        z, err, mag = (t[idx] for t in prep)
        diff = z.gather(1, y[:, None]) - z
        lower = diff - 2 * self.lipschitz * eps[:, None] - 2 * err[:, None] - 2 * U64 * diff.abs()
        return lower.scatter(1, y[:, None], math.inf), mag


class _IntervalMember:
    """Lower bounds of z_y - z_j of an l-inf-dist chain over the clipped input box, by interval
    propagation (:mod:`lipcert.certify.interval`): tighter than the margin near the pixel range."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = chain_layers(model)

    def prepare(self, x: Tensor):
        return x

    @torch.no_grad()
    def lower_bounds(self, prep, idx: Tensor, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = propagate_box(self.layers, *input_box(prep[idx], eps))
        low_y = lo.gather(1, y[:, None])
        lower = low_y - hi - 2 * U64 * (low_y.abs() + hi.abs())
        return lower.scatter(1, y[:, None], math.inf), torch.maximum(lo.abs(), hi.abs()).amax(1)


class _HybridMember:
    def __init__(self, model: nn.Module) -> None:
        self.bounds = HybridBounds(model, float64_copy=False)  # members are the driver's float64 copies

    def prepare(self, x: Tensor):
        return self.bounds.prepare(x)

    def lower_bounds(self, prep, idx: Tensor, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        part = _Features(prep.feats[idx], prep.err[idx], prep.lipschitz, prep.pred[idx])
        return self.bounds.lower_bounds(part, y, eps)


class _HybridIntervalMember(_HybridMember):
    """A hybrid member bounded over its backbone's interval box of the clipped input box (intersected
    with the Lipschitz box; :meth:`HybridBounds.interval_lower_bounds`)."""

    def prepare(self, x: Tensor):
        return x, self.bounds.prepare(x)

    def lower_bounds(self, prep, idx: Tensor, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        x, fx = prep
        part = _Features(fx.feats[idx], fx.err[idx], fx.lipschitz, fx.pred[idx])
        return self.bounds.interval_lower_bounds(x[idx], part, y, eps)


@torch.no_grad()
def _mixed_batch(helpers, members, x: Tensor, y: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    m = len(helpers)
    preps = [h.prepare(x) for h in helpers]
    logits = torch.stack([mem(x) for mem in members]).mean(0)
    check_logits(logits, y)
    pred = logits.argmax(1)

    def check(idx: Tensor, e: Tensor) -> Tensor:
        parts = [h.lower_bounds(p, idx, y[idx], e) for h, p in zip(helpers, preps)]
        lowers = torch.stack([lb for lb, _ in parts])  # (m, b, K)
        mags = torch.stack([mag for _, mag in parts]).amax(0)  # (b,)
        finite = torch.where(torch.isinf(lowers), torch.zeros_like(lowers), lowers)
        avg = lowers.mean(0)
        slack = gamma(m + 2, U64) * finite.abs().mean(0) + 2 * (gamma(m + 2, U64) + gamma(m + 2, U32)) * mags[:, None]
        slack = torch.where(m * mags[:, None] < F32_SAFE, slack, math.nan)  # the float32 sum could overflow
        return ((avg - slack) > 0).all(1)

    r = bisect_radius(check, len(y), x.device, tol)
    return torch.where(pred == y, r, torch.zeros_like(r)), pred


def _base_batches(members: list[nn.Module], tol: float) -> BatchFn:
    """Batches certified by :func:`ensemble`: the averaged margin if every member is an l-inf-dist
    chain, else the averaged per-member lower bounds (bisection)."""
    if all(m.certificate == "linf_margin" for m in members):
        chains = [chain_layers(m) for m in members]
        lips = [chain_lipschitz(layers) for layers in chains]

        def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
            r, pred, _ = _all_margin_batch(chains, lips, xb, yb)
            return Certificate(radius=r.cpu(), prediction=pred.cpu(), label=yb.cpu(), norm="linf",
                               method="ensemble_margin", bound="exact")

        return batch
    helpers = [_MarginMember(m) if m.certificate == "linf_margin" else _HybridMember(m) for m in members]

    def mixed(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        r, pred = _mixed_batch(helpers, members, xb, yb, tol)
        return Certificate(radius=r.cpu(), prediction=pred.cpu(), label=yb.cpu(), norm="linf",
                           method="ensemble_interval", bound="upper")

    return mixed


def _setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
           tol: float = 1e-5) -> BatchFn:
    return _base_batches(list(model64.members), tol)


def _best_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                tol: float = 1e-5) -> BatchFn:
    members = list(model64.members)
    base = _base_batches(members, tol)
    if not in_unit_box(x):
        return base  # the interval bound clips the ball to [0, 1]
    helpers = [_IntervalMember(m) if m.certificate == "linf_margin" else _HybridIntervalMember(m) for m in members]

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        b = base(xb, yb, rows)
        r, _ = _mixed_batch(helpers, members, xb, yb, tol)
        iv = r.cpu()
        return larger_radius(b, Certificate(iv, b.prediction, b.label, "linf", "ensemble_interval", "upper"),
                             b.method + "+interval", {"margin_radius": b.radius, "interval_radius": iv})

    return batch


#: The averaged margin (all members l-inf-dist chains) or averaged member bounds (some hybrids).
ENSEMBLE = Certifier("ensemble margin", "linf", _setup, check=_check_members)
#: :data:`ENSEMBLE` and the ensemble's interval bound together (the default of ensembles).
ENSEMBLE_BEST = Certifier("ensemble best", "linf", _best_setup, check=_check_members)


def ensemble(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of the averaged logits of ``model.members`` (see module docstring)."""
    return ENSEMBLE(model, x, y, batch_size=batch_size, eps=eps, tol=tol)


def ensemble_best(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5, batch_size: int = 500) -> Certificate:
    """:func:`ensemble` and the ensemble's interval bound together; each sample gets the larger radius.

    The interval bound averages every member's lower bounds of ``z_y - z_j`` over the input box
    clipped to [0, 1] (interval propagation for l-inf-dist members, as :func:`lipcert.certify.interval`;
    the head's interval bounds for hybrids) and bisects the radius (tolerance ``tol``); it certifies
    perturbed inputs that stay valid pixels (inputs outside [0, 1] get :func:`ensemble` alone). ``extra`` holds ``margin_radius`` (the averaged-margin
    or default ensemble certificate) and ``interval_radius``.
    """
    return ENSEMBLE_BEST(model, x, y, batch_size=batch_size, eps=eps, tol=tol)


register_certifier("linf_ensemble", ENSEMBLE_BEST)
register_certifier("linf_ensemble", ENSEMBLE, method="margin", fast=True)
register_certifier("linf_ensemble", ENSEMBLE_BEST, method="best")
