"""Margin certificate for l-inf Lipschitz networks (001 Fact 3.2), sound in floating point.

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

import copy
import math

import torch
from torch import Tensor, nn

from ..nn import relaxed_p
from .result import Certificate, CertificationError

U64 = 2.0**-53
U32 = 2.0**-24
#: Magnitudes below this cannot overflow float32 (largest finite value ~2^128) in one step of a layer.
F32_SAFE = 2.0**126


def check_inputs(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Clear errors for inputs a certificate cannot be computed on."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise CertificationError("x and y must be tensors")
    if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise CertificationError(f"expected x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise CertificationError(f"{bad} input(s) contain NaN or inf; certificates need finite inputs")
    if y.dtype not in (torch.int64, torch.int32):
        raise CertificationError(f"labels must be integers, got dtype {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise CertificationError(f"labels must be >= 0, got {int(y.min())}")
    check_model_tensors(model)


def check_model_tensors(model: nn.Module) -> None:
    """Refuse models whose stored tensors break what a certificate's maths needs, whatever the
    constructors checked when the model was built (a state dict loaded from a file bypasses them):
    every floating parameter and buffer finite, and every layer that states further conditions
    (``check_certifiable()``, e.g. a normalisation std of 0) satisfying them. The error names the
    offending tensor or layer."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CertificationError(
                f"the model's {name} contains NaN or inf (diverged training?); a model with non-finite weights "
                "cannot be certified"
            )
    for name, module in model.named_modules():
        check = getattr(module, "check_certifiable", None)
        if check is None:
            continue
        try:
            check()
        except ValueError as err:
            raise CertificationError(f"the model's layer {name or type(module).__name__} cannot be certified: {err}") from None


def layer_lipschitz(layer: nn.Module) -> float:
    """A layer's stated l-inf Lipschitz constant, refused unless finite and > 0: a certificate divides
    by products of these, so a negative, zero, NaN or infinite value (e.g. computed from tensors
    loaded from a file) would give a radius that means nothing."""
    value = float(layer.linf_lipschitz())
    if not (0.0 < value < math.inf):
        raise CertificationError(
            f"layer {type(layer).__name__} states an l-inf Lipschitz constant of {value!r}; a certificate needs a "
            "finite positive constant (check the layer's stored tensors)"
        )
    return value


def check_logits(logits: Tensor, y: Tensor) -> None:
    """Clear errors when the labels do not fit the model's outputs (called once logits are known)."""
    k = logits.shape[1] if logits.dim() == 2 else 0
    if k < 2:
        raise CertificationError(f"the model must output (N, classes) logits with at least 2 classes, got shape {tuple(logits.shape)}")
    if y.numel() and int(y.max()) >= k:
        raise CertificationError(f"label {int(y.max())} is out of range for a model with {k} outputs")


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


def _check_linf_model(model: nn.Module) -> list[nn.Module]:
    if getattr(model, "certificate", None) != "linf_margin" or not hasattr(model, "linf_lipschitz"):
        raise CertificationError(
            f"{type(model).__name__} is not a 1-Lipschitz l-inf network; use lipcert.certify.certify(), "
            "which picks the certificate the model supports"
        )
    return chain_layers(model)


def chain_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of an l-inf Lipschitz chain (``model.children()``), checked for certification:
    no l_p-relaxed layer at finite p (LSE-relaxed layers are 1-Lipschitz at every p) and every
    layer states its Lipschitz constant and rounding bound."""
    p = relaxed_p(model)
    if p is not None:
        raise CertificationError(
            f"the model has l_p-distance layers with p = {p:g}; as evaluated it is only d^(L/p)-Lipschitz "
            "(000 Prop. 4.1), so the margin certificate does not hold. Set p = inf first "
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


@torch.no_grad()
def _certify_batch(model64: nn.Module, layers: list[nn.Module], x: Tensor, y: Tensor) -> Certificate:
    total = math.prod(layer_lipschitz(layer) for layer in layers)
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


def margin(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii ``margin / (2 L)`` of an l-inf Lipschitz chain (001 Fact 3.2).

    ``model`` is evaluated as a copy in float64 and eval mode (mean-shift uses running means).
    Raises :class:`CertificationError` for models still in l_p mode or inputs that are not finite.
    """
    check_inputs(model, x, y)
    _check_linf_model(model)
    model64 = copy.deepcopy(model).to(torch.float64).eval()
    layers = list(model64.children())
    device = next(model.parameters()).device
    parts = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(device)
        yb = y[s : s + batch_size].to(device).long()
        try:
            parts.append(_certify_batch(model64, layers, xb, yb))
        except (RuntimeError, IndexError) as err:
            raise CertificationError(f"model could not be evaluated on inputs of shape {tuple(xb.shape)}: {err}") from None
    if not parts:
        raise CertificationError("no samples to certify")
    return Certificate.cat(parts)
