"""The one reading of a model for the l2 bounds: a sequence of blocks.

:func:`parse` walks a model's children once (an ``nn.Sequential``, or any module whose children
run in order) and groups them into :class:`Block` s::

    [normalize / reshape layers]  affine-or-residual layer  [activation]

with the shapes seen on the way, every layer's role decided by :mod:`lipcert.bounds.layers`.
Every engine reads this: :class:`~lipcert.bounds.chain.LipschitzChain` (box / ball propagation,
global and local bounds of Huang21, the float32 error walk), :class:`~lipcert.bounds.ltnet.LTNet`
(LipLT and pairwise bounds of Fazlyab23) and :func:`forward_error` below (the rounding error of the
logits of any network LTNet reads). Each engine adds only its own structural rules (e.g. Huang21's
chains need an activation after every layer but the last).

The blocks hold modules, not tensors: operators are built from the current weights whenever an
engine asks (:meth:`Block.op`), so gradients reach the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..numerics import U64, gamma
from .layers import BatchNormFold, UnsupportedLayer, affine_op, check_batchnorm, reshaped, role
from .operators import LinearOp


class NetworkError(ValueError):
    """The model is not a network the l2 bounds can read."""


SUPPORTED = "InputNormalize, Flatten, Conv2d, Linear, BatchNorm1d / BatchNorm2d after them, lipcert.nn.activations, nn.ReLU"


@dataclass
class Block:
    """One affine (or residual) layer ``main``, the normalize / reshape layers before it (``pre``)
    and the activation after it (``act``, None if none). ``in_shape``: the shape before ``pre``
    (the operator's input shape); ``operand_shape``: after it; ``out_shape``: of ``main``'s output."""

    pre: list[nn.Module]
    main: nn.Module
    kind: str  # "affine" | "residual"
    in_shape: tuple[int, ...]
    operand_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    act: nn.Module | None = None

    @property
    def normalize(self) -> nn.Module | None:
        return next((m for m in self.pre if role(m) == "normalize"), None)

    def in_scale(self) -> Tensor | None:
        """1/std of an input normalisation in ``pre`` (folded into the operator), else None."""
        norm = self.normalize
        if norm is None:
            return None
        return 1.0 / norm.std.to(self.main.weight.dtype)

    def op(self, fold_scale: bool = True) -> LinearOp:
        """The affine layer's operator from the current weights (input scale folded in)."""
        return affine_op(self.main, self.in_shape, self.in_scale() if fold_scale else None)

    def operand(self, h: Tensor) -> Tensor:
        for m in self.pre:
            h = m(h)
        return h


@dataclass
class Network:
    """A parsed model: its blocks and its input shape (batch dim excluded)."""

    blocks: list[Block]
    in_shape: tuple[int, ...]


def resolve_in_shape(model: nn.Module, in_shape: Sequence[int] | None, error: type[Exception]) -> tuple[int, ...]:
    if in_shape is None:
        in_shape = getattr(model, "in_shape", None)
    if in_shape is None:
        raise error(f"{type(model).__name__} does not state its input shape; pass in_shape=(C, H, W)")
    return tuple(int(s) for s in in_shape)


def parse(model: nn.Module, in_shape: Sequence[int] | None = None, error: type[Exception] = NetworkError,
          reader: str = "the l2 bounds", residual: bool = True) -> Network:
    """Read ``model`` as blocks (module docstring). Errors are raised as ``error`` and name
    ``reader`` (the engine that asked); ``residual=False`` refuses residual layers."""
    shape = resolve_in_shape(model, in_shape, error)
    start = shape
    blocks: list[Block] = []
    pending: list[nn.Module] = []
    pending_shape = shape
    children = list(model.children())
    for i, child in enumerate(children):
        r = role(child)
        if r == "residual" and not residual:
            r = None
        if r == "normalize":
            if i > 0:
                raise error("InputNormalize must be the first layer of the model")
            pending.append(child)
        elif r == "reshape":
            if not pending:
                pending_shape = shape
            pending.append(child)
            shape = reshaped(child, shape)
        elif r in ("affine", "residual"):
            stage_in = pending_shape if pending else shape
            if r == "affine":
                try:
                    out_shape = tuple(affine_op(child, stage_in).out_shape)
                except UnsupportedLayer as err:
                    raise error(str(err)) from None
            else:
                out_shape = tuple(stage_in)
            blocks.append(Block(pre=pending, main=child, kind=r, in_shape=tuple(stage_in), operand_shape=shape, out_shape=out_shape))
            pending = []
            shape = out_shape
        elif r == "batchnorm":
            if not blocks or blocks[-1].act is not None or pending or blocks[-1].kind != "affine" \
                    or isinstance(blocks[-1].main, BatchNormFold):
                raise error(f"{type(child).__name__} must directly follow a Linear / Conv2d layer")
            if i == len(children) - 1:
                raise error(f"{type(child).__name__} after the logits layer is not supported")
            fold = BatchNormFold(blocks[-1].main, child)
            try:
                check_batchnorm(child)
                affine_op(fold, blocks[-1].in_shape)
            except UnsupportedLayer as err:
                raise error(str(err)) from None
            blocks[-1].main = fold
        elif r == "activation":
            if not blocks or blocks[-1].act is not None or pending or blocks[-1].kind != "affine":
                raise error(f"activation {type(child).__name__} must directly follow a Linear / Conv2d layer")
            blocks[-1].act = child
        else:
            raise error(f"layer {type(child).__name__} is not supported by {reader} (supported: {SUPPORTED}"
                        + (", lipcert.nn.residual_l2 layers)" if residual else ")"))
    if not blocks:
        raise error("the model has no Linear / Conv2d layer")
    if pending:
        raise error("the model ends with shape-only layers after its last Linear layer")
    if blocks[-1].act is not None or blocks[-1].kind != "affine" or isinstance(blocks[-1].main, BatchNormFold):
        raise error("the model must end with a Linear / Conv2d layer (the logits), not an activation")
    return Network(blocks=blocks, in_shape=start)


@torch.no_grad()
def forward_error(net: Network, x: Tensor, residual_t: dict[int, Tensor] | None = None,
                  unit: float = U64) -> tuple[Tensor, Tensor]:
    """Float64 logits of the parsed (float64) network at ``x`` and an elementwise rigorous bound on
    their rounding error, block by block: an affine layer adds ``gamma_(n+2) (|W| |h| + |b|)`` to
    the propagated ``|W| e``; activations apply their ``error_rule``; the input normalisation
    divides the error by ``|std|`` and adds ``3 u |h|``; residual layers use their own
    ``error_bound`` with the ``T`` in ``residual_t`` (by ``id`` of the module). A folded BatchNorm
    (:class:`~lipcert.bounds.layers.BatchNormFold`) is evaluated as the model computes it (conv,
    then BatchNorm); its operator's ``weight_ops`` and bias magnitude cover both roundings; in
    training mode it is refused."""
    u = unit
    h = x.to(torch.float64)
    e = torch.zeros_like(h)
    for b in net.blocks:
        for m in b.pre:
            if role(m) == "normalize":
                h = m(h)
                shape = [1, -1] + [1] * (h.dim() - 2)
                e = e / m.std.to(torch.float64).abs().view(shape) + 3 * u * h.abs()  # |1/std|: any sign
            else:
                h, e = m(h), m(e)
        if b.kind == "residual":
            h, e = b.main.error_bound(h, e, residual_t[id(b.main)], u)
        else:
            if isinstance(b.main, BatchNormFold) and b.main.bn.training:
                raise NetworkError("a BatchNorm layer is in training mode; the rounding bound needs model.eval()")
            op = b.op(fold_scale=False)
            e = op.abs_raw(e).reshape(-1, *op.out_shape) + gamma(op.terms + op.weight_ops + 2, u) * op.abs_affine(h.abs()).reshape(-1, *op.out_shape)
            h = b.main(h)
            e = e * (1 + 4 * u)
        if b.act is not None:
            h = b.act(h)
            e = b.act.error_rule(e) if hasattr(b.act, "error_rule") else e
    return h, e


__all__ = ["Block", "Network", "NetworkError", "SUPPORTED", "forward_error", "parse", "resolve_in_shape"]
