"""What the l2 bounds know about each kind of layer: the one adapter table.

Every layer the l2 bounds read falls in one of four roles, decided here and nowhere else:

* **affine** -- a linear map plus bias (``nn.Linear``, ``nn.Conv2d``, or any layer with an
  ``l2_linear()`` method, see :func:`_own_linear`): :func:`affine_op` returns its
  :class:`~lipcert.bounds.operators.LinearOp` on the real input shape (``W``, ``W^T``, ``|W|``,
  rigorous norm bound, rounding facts, bias). The layer's own ``forward`` must compute
  ``raw_weight x + bias`` of that operator; the contract tests check it.
* **activation** -- :class:`lipcert.nn.activations.Activation` (box / mask / rounding / slope rules
  on the layer itself) or ``nn.ReLU`` (read as :class:`~lipcert.nn.activations.ReLU`).
* **normalize** / **reshape** -- :class:`~lipcert.nn.common.InputNormalize` (folded into the
  first affine operator as a per-channel scale), ``Flatten`` / ``nn.Flatten`` / ``nn.Identity``.
* **residual** -- a layer with ``liplt_parts()`` (Fazlyab23 Prop. 3.1,
  :class:`lipcert.nn.residual_l2.SqrtRhoResidual`), read by LipLT only.

A new torch layer type is supported by one :func:`register_affine` call; a new lipcert layer
states its linear part itself (``l2_linear``), with no edit here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..nn.activations import Activation, ReLU
from ..nn.common import Flatten, InputNormalize
from .operators import ConvOp, DenseOp, LinearOp


class UnsupportedLayer(ValueError):
    """A layer (or a layer's configuration) the l2 bounds do not understand."""


def _linear(m: nn.Linear, in_shape: Sequence[int], in_scale: Tensor | None) -> LinearOp:
    if in_scale is not None and in_scale.numel() not in (1, in_shape[0]):
        raise UnsupportedLayer(f"InputNormalize has {in_scale.numel()} channels but the first layer's input has shape {tuple(in_shape)}")
    return DenseOp(m.weight, in_shape, in_scale, bias=m.bias)


def _conv(m: nn.Conv2d, in_shape: Sequence[int], in_scale: Tensor | None) -> LinearOp:
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedLayer("the l2 bounds support Conv2d with groups=1, dilation=1 and numeric zero padding only "
                               "(not 'same' / 'valid')")
    if len(in_shape) != 3:
        raise UnsupportedLayer(f"Conv2d needs (C, H, W) inputs, got shape {tuple(in_shape)}")
    return ConvOp(m.weight, in_shape, m.stride, m.padding, in_scale, bias=m.bias)


#: torch layer types with a linear part, and how to read it (subclasses are found by their MRO)
AFFINE: dict[type, Callable[[nn.Module, Sequence[int], Tensor | None], LinearOp]] = {nn.Linear: _linear, nn.Conv2d: _conv}
RESHAPE: tuple[type, ...] = (Flatten, nn.Flatten, nn.Identity)


def register_affine(cls: type, build: Callable[[nn.Module, Sequence[int], Tensor | None], LinearOp]) -> None:
    """Teach the l2 bounds a torch layer type: ``build(layer, in_shape, in_scale)`` -> its operator."""
    AFFINE[cls] = build


def _own_linear(m: nn.Module, in_shape: Sequence[int], in_scale: Tensor | None) -> LinearOp:
    """A layer that states its linear part: ``m.l2_linear()`` returns a dict with ``weight`` (the
    matrix it applies: (out, in) dense, or an (out, in, kh, kw) kernel with ``stride`` and
    ``padding``, zero-padded), ``bias`` (or None) and optionally ``weight_ops`` (rounded operations
    of forming the matrix from its parameters, see :class:`~lipcert.bounds.operators.LinearOp`).
    Its ``forward`` must compute exactly that affine map."""
    part = m.l2_linear()
    w, b, k = part["weight"], part.get("bias"), int(part.get("weight_ops", 0))
    if w.dim() == 2:
        if math.prod(in_shape) != w.shape[1]:
            raise UnsupportedLayer(f"{type(m).__name__} takes {w.shape[1]} features but its input has shape {tuple(in_shape)}")
        return DenseOp(w, in_shape, in_scale, bias=b, weight_ops=k)
    if w.dim() == 4 and len(in_shape) == 3:
        return ConvOp(w, in_shape, part.get("stride", 1), part.get("padding", 0), in_scale, bias=b, weight_ops=k)
    raise UnsupportedLayer(f"{type(m).__name__}.l2_linear() gave a weight of shape {tuple(w.shape)} for inputs {tuple(in_shape)}")


def _builder(m: nn.Module) -> Callable | None:
    if callable(getattr(m, "l2_linear", None)):
        return _own_linear
    for cls in type(m).__mro__:
        if cls in AFFINE:
            return AFFINE[cls]
    return None


def role(m: nn.Module) -> str | None:
    """"affine", "activation", "normalize", "reshape", "residual", or None (unsupported)."""
    if isinstance(m, InputNormalize):
        return "normalize"
    if isinstance(m, RESHAPE):
        return "reshape"
    if isinstance(m, (Activation, nn.ReLU)):
        return "activation"
    if _builder(m) is not None:
        return "affine"
    if hasattr(m, "liplt_parts"):
        return "residual"
    return None


def affine_op(m: nn.Module, in_shape: Sequence[int], in_scale: Tensor | None = None) -> LinearOp:
    """The operator of an affine layer on inputs of shape ``in_shape`` (``in_scale``: a folded
    per-channel input scale, e.g. 1/std of a preceding :class:`InputNormalize`)."""
    build = _builder(m)
    if build is None:
        raise UnsupportedLayer(f"{type(m).__name__} is not an affine layer the l2 bounds know")
    if in_scale is not None:
        ref = m.weight if isinstance(getattr(m, "weight", None), Tensor) else in_scale
        in_scale = in_scale.to(device=ref.device, dtype=ref.dtype)
    return build(m, tuple(int(s) for s in in_shape), in_scale)


def as_activation(m: nn.Module) -> nn.Module:
    """lipcert's activation for ``m`` (``nn.ReLU`` -> :class:`ReLU`, which states its rules)."""
    return m if isinstance(m, Activation) else ReLU()


def reshaped(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape after a reshape-role layer."""
    if isinstance(m, (Flatten, nn.Flatten)):
        return (math.prod(shape),)
    return shape


__all__ = ["AFFINE", "RESHAPE", "UnsupportedLayer", "affine_op", "as_activation", "register_affine", "reshaped", "role"]
