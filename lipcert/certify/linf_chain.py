"""An l-inf Lipschitz chain as the l-inf certificates read it: its checked layers
(:func:`chain_layers`), its forward pass with each layer's input / output magnitudes
(:func:`forward_with_absmax`) and a rigorous bound on the rounding error of its outputs
(:func:`rounding_bound`), for the float64 evaluation at x and for float32 inference anywhere in a
ball around x. The margin, interval, hybrid and ensemble certificates are built on these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..nn import relaxed_p
from .checks import layer_lipschitz
from .result import CertificationError

from ..numerics import F32_SAFE, U32, U64  # noqa: F401  (re-exported for the l-inf certifiers)


def param_absmax(layers: list[nn.Module]) -> float:
    """Largest magnitude of any floating parameter or buffer of the layers (0 if none)."""
    values = [float(t.detach().abs().max()) for layer in layers for t in [*layer.parameters(), *layer.buffers()]
              if t.is_floating_point() and t.numel()]
    return max(values, default=0.0)


def f32_may_overflow(in_absmax: Tensor, out_absmax: Tensor, pmax: float) -> Tensor:
    """Per sample: could a float32 evaluation of a layer overflow? Every intermediate of the layers
    here is at most ``|in| + |out| + 2 max|param|`` (e.g. ``|x_i - w_i|``, ``|layer(x)|`` inside a
    residual); below ``F32_SAFE`` (a factor 4 under float32's largest value) nothing overflows, and
    the rounding bounds hold. NaN counts as overflow."""
    return ~(in_absmax + out_absmax + 2.0 * pmax < F32_SAFE)


def chain_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of an l-inf Lipschitz chain (``model.children()``), checked for certification:
    no l_p-relaxed layer at finite p (LSE-relaxed layers are 1-Lipschitz at every p) and every
    layer states its Lipschitz constant and rounding bound."""
    p = relaxed_p(model)
    if p is not None:
        raise CertificationError(
            f"the model has l_p-distance layers with p = {p:g}; as evaluated it is only d^(L/p)-Lipschitz "
            "(Zhang22 Prop. 4.1), so the margin certificate does not hold. Set p = inf first "
            "(lipcert.nn.set_p(model, float('inf')))"
        )
    layers = list(model.children())
    for layer in layers:
        if not hasattr(layer, "rounding_error") or not hasattr(layer, "linf_lipschitz"):
            raise CertificationError(f"layer {type(layer).__name__} states no Lipschitz constant / rounding bound")
        layer_lipschitz(layer)
    return layers


def forward_with_absmax(layers: list[nn.Module], x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Run the chain in x's dtype; also return each layer's (input, output) l-inf norms per sample."""
    absmax: list[tuple[Tensor, Tensor]] = []
    h = x
    for layer in layers:
        out = layer(h)
        absmax.append((h.flatten(1).abs().amax(1), out.flatten(1).abs().amax(1)))
        h = out
    return h, absmax


def rounding_bound(layers: list[nn.Module], absmax: list[tuple[Tensor, Tensor]], r_cap: Tensor) -> Tensor:
    """Rigorous bound (per sample) on the l-inf error of the chain's outputs: each layer's rounding
    bound times the Lipschitz constant of the layers after it, for the float64 evaluation at x
    (``absmax`` from :func:`forward_with_absmax`) plus a float32 evaluation anywhere within
    ``r_cap`` of x (activations there are at most ``r_cap * L_prefix`` larger). Infinite where
    float32 inference could overflow (:func:`f32_may_overflow`): a rounding bound is no bound there."""
    pmax = param_absmax(layers)
    lips = [layer_lipschitz(layer) for layer in layers]
    suffix = [math.prod(lips[i + 1 :]) for i in range(len(lips))]
    prefix_in = [math.prod(lips[:i]) for i in range(len(lips))]
    prefix_out = [math.prod(lips[: i + 1]) for i in range(len(lips))]
    err = torch.zeros_like(r_cap)
    for layer, (m_in, m_out), s, pi, po in zip(layers, absmax, suffix, prefix_in, prefix_out):
        err += s * layer.rounding_error(m_in, m_out, U64)
        in32, out32 = m_in + r_cap * pi, m_out + r_cap * po
        err32 = s * layer.rounding_error(in32, out32, U32)
        err += torch.where(f32_may_overflow(in32, out32, pmax), math.inf, err32)
    return err


def chain_lipschitz(layers: list[nn.Module]) -> float:
    """The chain's l-inf Lipschitz constant: the product of its layers' checked constants."""
    return math.prod(layer_lipschitz(layer) for layer in layers)
