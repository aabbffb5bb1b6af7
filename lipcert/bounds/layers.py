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
* **batchnorm** -- ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` directly after an affine layer: the
  parser merges the two into one :class:`BatchNormFold` (an affine layer; eval-mode BatchNorm is a
  per-channel affine map, folded into the preceding operator as the authors of Fazlyab23 do in
  their power iteration, ``Conv2dBatchNorm``).

A new torch layer type is supported by one :func:`register_affine` call; a new lipcert layer
states its linear part itself (``l2_linear``), with no edit here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
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


#: rounded operations counted for a folded BatchNorm (``BatchNormFold.weight_ops``): forming
#: ``s = gamma / sqrt(var + eps)`` and ``s W`` in float64 (4: the sum, the square root, the
#: division, the product), plus the model's own BatchNorm after its conv / linear output, in either
#: of its forms ``(y - mean) * invstd * gamma + beta`` or ``y * a + (beta - mean * a)`` (at most 6
#: per term, an rsqrt within 2 ulp included), plus 2 spare
BN_FOLD_OPS = 12
BATCHNORM: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d)


class BatchNormFold(nn.Module):
    """An affine layer followed by an eval-mode BatchNorm, read as one affine layer.

    ``forward`` is the model's own ``bn(affine(x))``; the operator (:func:`_folded`) is
    ``W' = s W``, ``b' = s (b - mean) + beta`` with ``s = gamma / sqrt(running_var + eps)`` per
    output channel, formed in float64 from the tensors (checked: ``running_var`` finite and >= 0,
    ``eps >= 0``, ``running_var + eps > 0``, every BatchNorm tensor finite; a loaded file is never
    trusted). Its rounding is counted
    as ``weight_ops = BN_FOLD_OPS``, and rounding walks use ``|s| (|b| + |mean|) + |beta|`` (>= |b'|)
    as the bias magnitude, which bounds the rounding of computing conv then BatchNorm (two
    roundings of the model's float32 forward) by ``gamma_(n + weight_ops + 2)`` of
    ``|W'| |x| + that``. Running statistics are used whatever the mode (the authors' power
    iteration does the same); certificates refuse a BatchNorm in training mode
    (:func:`check_eval`)."""

    def __init__(self, affine: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.affine = affine
        self.bn = bn

    @property
    def weight(self) -> Tensor:
        return self.affine.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.affine(x))


def check_batchnorm(bn: nn.Module) -> None:
    """Refuse a BatchNorm whose eval-mode map is not a finite per-channel affine map."""
    if bn.running_var is None or bn.running_mean is None:
        raise UnsupportedLayer(f"{type(bn).__name__} without running statistics (track_running_stats=False) "
                               "normalises with batch statistics; the l2 bounds need running statistics")
    var = bn.running_var.detach().to(torch.float64)
    eps = float(bn.eps)
    d = var + eps
    # var >= 0 as well: the model's own forward rounds eps (e.g. to float32) before adding it, which
    # is a small relative error of var + eps only when var >= 0 (no cancellation)
    good = torch.isfinite(var) & (var >= 0) & torch.isfinite(d) & (d > 0)
    if not (math.isfinite(eps) and eps >= 0 and bool(good.all())):
        bad = int((~good).sum())
        raise UnsupportedLayer(f"{type(bn).__name__}: running_var must be finite and >= 0 and running_var + eps > 0 "
                               f"in every channel (eps = {eps:g}; {bad} of {var.numel()} channels are not, "
                               f"min running_var {float(var.min()):.3g}); refusing the model")
    for name in ("running_mean", "weight", "bias"):
        t = getattr(bn, name, None)
        if t is not None and not torch.isfinite(t.detach()).all():
            raise UnsupportedLayer(f"{type(bn).__name__}.{name} has non-finite entries; refusing the model")


def check_eval(model: nn.Module) -> None:
    """Refuse BatchNorm layers in training mode (they normalise with batch statistics, which no
    certificate of a single input describes)."""
    for name, m in model.named_modules():
        if isinstance(m, BATCHNORM) and m.training:
            raise UnsupportedLayer(f"BatchNorm layer {name or type(m).__name__} is in training mode; certificates "
                                   "need model.eval() (running statistics)")


def _fold(m: BatchNormFold) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(per-channel scale s, folded bias b', bias magnitude bound, affine weight), float64."""
    bn = m.bn
    check_batchnorm(bn)
    w = m.affine.weight
    f64 = dict(dtype=torch.float64, device=w.device)
    c = w.shape[0]
    if bn.num_features != c:
        raise UnsupportedLayer(f"{type(bn).__name__}({bn.num_features}) follows a layer with {c} output channels")
    gam = bn.weight.to(**f64) if bn.weight is not None else torch.ones(c, **f64)
    beta = bn.bias.to(**f64) if bn.bias is not None else torch.zeros(c, **f64)
    mean = bn.running_mean.to(**f64)
    s = gam / torch.sqrt(bn.running_var.to(**f64) + float(bn.eps))
    b = m.affine.bias.to(**f64) if m.affine.bias is not None else torch.zeros(c, **f64)
    return s, s * (b - mean) + beta, s.abs() * (b.abs() + mean.abs()) + beta.abs(), w.to(**f64)


def _folded(m: BatchNormFold, in_shape: Sequence[int], in_scale: Tensor | None) -> LinearOp:
    inner = affine_op(m.affine, in_shape)  # the inner layer's own checks (conv configuration, shapes)
    if isinstance(m.bn, nn.BatchNorm2d) != isinstance(inner, ConvOp):
        raise UnsupportedLayer(f"{type(m.bn).__name__} cannot follow {type(m.affine).__name__}")
    s, bias, abs_b, w64 = _fold(m)
    dt = m.affine.weight.dtype
    w = (w64 * s.view(-1, *([1] * (w64.dim() - 1)))).to(dt)
    bias, abs_b = bias.to(dt), abs_b.to(dt)
    if isinstance(inner, ConvOp):
        return ConvOp(w, in_shape, inner.stride, inner.padding, in_scale, bias=bias, weight_ops=BN_FOLD_OPS,
                      abs_bias_bound=abs_b)
    return DenseOp(w, in_shape, in_scale, bias=bias, weight_ops=BN_FOLD_OPS, abs_bias_bound=abs_b)


#: torch layer types with a linear part, and how to read it (subclasses are found by their MRO)
AFFINE: dict[type, Callable[[nn.Module, Sequence[int], Tensor | None], LinearOp]] = {
    nn.Linear: _linear, nn.Conv2d: _conv, BatchNormFold: _folded}
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
    """"affine", "activation", "normalize", "reshape", "residual", "batchnorm", or None (unsupported)."""
    if isinstance(m, BATCHNORM):
        return "batchnorm"
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


__all__ = ["AFFINE", "BATCHNORM", "BN_FOLD_OPS", "BatchNormFold", "RESHAPE", "check_batchnorm", "check_eval", "UnsupportedLayer", "affine_op", "as_activation", "register_affine", "reshaped", "role"]
