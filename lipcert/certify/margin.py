"""Margin certificate for l-inf Lipschitz networks (Zhang21 Fact 3.2), sound in floating point.

If g is L-Lipschitz w.r.t. l-inf and ``margin = g_y(x) - max_{j != y} g_j(x) > 0``, no input
within ``margin / (2 L)`` of x changes the prediction. For an l-inf-dist net L = 1 / std of the
input normalisation, so the radius in raw pixels is ``margin * std / 2``.

Floating point. The certificate is about the network with its stored weights. We evaluate it in
float64 and subtract, from the margin, twice a rigorous bound on the logit error, summing each
layer's own rounding bound (``layer.rounding_error``) times the Lipschitz constant of the layers
after it. The bound covers both the float64 evaluation used here and a float32 evaluation of the
network anywhere in the certified ball (activations there are at most ``radius * L_prefix``
larger), so a certified sample is also classified correctly by ordinary float32 inference of
every perturbed input. Where float32 inference could overflow (magnitudes near 2^128) no rounding
bound holds and the radius is 0. The final division is rounded down.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .checks import check_logits
from .driver import BatchFn, Certifier
from .linf_chain import U64, chain_layers, chain_lipschitz, forward_with_absmax, rounding_bound
from .result import Certificate, CertificationError


def check_linf_chain(model: nn.Module, x: Tensor | None = None, **_options) -> None:
    """Refuse models that are not l-inf Lipschitz chains (or are still in l_p mode)."""
    if getattr(model, "certificate", None) != "linf_margin" or not hasattr(model, "linf_lipschitz"):
        raise CertificationError(
            f"{type(model).__name__} is not a 1-Lipschitz l-inf network; use lipcert.certify.certify(), "
            "which picks the certificate the model supports"
        )
    chain_layers(model)


@torch.no_grad()
def margin_batch(layers: list[nn.Module], x: Tensor, y: Tensor) -> Certificate:
    """The margin certificate of one float64 batch through the chain ``layers``."""
    total = chain_lipschitz(layers)
    logits, absmax = forward_with_absmax(layers, x.to(torch.float64))
    check_logits(logits, y)

    pred = logits.argmax(1)
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    margin = true - other
    r_cap = margin.clamp_min(0) / (2 * total)  # no certified radius can exceed this

    err = rounding_bound(layers, absmax, r_cap)
    margin_low = margin - 2 * err - 2 * U64 * margin.abs()
    radius = (margin_low.clamp_min(0) / (2 * total)) * (1 - 8 * U64)
    radius = torch.where(pred == y, radius, torch.zeros_like(radius))
    return Certificate(
        radius=radius.cpu(),
        prediction=pred.cpu(),
        label=y.cpu(),
        norm="linf",
        method="linf_margin",
        bound="exact",
        extra={"margin": margin.cpu(), "rounding_slack": (2 * err).cpu()},
    )


def _setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps=None) -> BatchFn:
    layers = list(model64.children())
    return lambda xb, yb, rows: margin_batch(layers, xb, yb)


#: The margin certificate (``eps`` is accepted and not needed).
MARGIN = Certifier("margin", "linf", _setup, check=check_linf_chain)


def margin(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii ``margin / (2 L)`` of an l-inf Lipschitz chain (Zhang21 Fact 3.2).

    ``model`` is evaluated as a copy in float64 and eval mode (mean-shift uses running means).
    Raises :class:`CertificationError` for models still in l_p mode or inputs that are not finite.
    """
    return MARGIN(model, x, y, batch_size=batch_size)
