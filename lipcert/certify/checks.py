"""What every certificate checks before it trusts a tensor: inputs, labels, the model's stored tensors,
stated Lipschitz constants, the logits' shape, and the raw-pixel range the interval certificates
clip to. The driver (:mod:`lipcert.certify.driver`) runs :func:`check_inputs` for every certifier."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .result import CertificationError


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


def in_unit_box(x: Tensor) -> bool:
    """Are all inputs raw pixels in [0, 1] (where the interval certificates clip the ball)?"""
    return not x.numel() or (float(x.min()) >= 0.0 and float(x.max()) <= 1.0)


def check_unit_box(x: Tensor) -> None:
    """The interval certificates clip the ball to [0, 1]: refuse inputs that are not raw pixels."""
    if not in_unit_box(x):
        raise CertificationError(
            f"interval certificates assume raw inputs in [0, 1] (the ball is clipped to it), got values in "
            f"[{float(x.min()):g}, {float(x.max()):g}]; pass unnormalised [0, 1] inputs or use method='margin'"
        )
