"""Linear operators: the linear part of one layer on its *real* input shape.

A :class:`LinearOp` maps batched tensors ``(B, *in_shape) -> (B, *out_shape)`` and knows

* ``forward(x)`` = W x and ``adjoint(y)`` = W^T y (conv: ``conv2d`` / ``conv_transpose2d`` with
  the layer's stride and zero padding, ``output_padding`` chosen so the adjoint lands exactly on
  the input shape);
* ``abs_forward(x)`` = |W| x (interval radii, rounding-error propagation);
* ``row_norms()`` -- an upper bound on the l2 norm of every row of W, broadcastable to
  ``out_shape`` (BCP ball propagation, Huang21 Eq. 23);
* ``norm_upper()`` -- a provable upper bound on ||W||_2 computed in float64 (see
  :mod:`lipcert.bounds.norms`), with ``norm_kind`` "exact" (dense SVD) or "upper" (conv);
* ``dense()`` -- the full matrix (tests, small layers);
* rounding facts: ``fan_in`` (the number of rounded operations along any output entry, for
  Higham's gamma_n), ``abs_norm_upper()`` (a provable bound of ``|| |W| ||_2``), ``cost``
  (multiply-adds per input vector, for budgets), and for layer operators ``terms`` (the length of
  every dot product), ``abs_raw(t)`` = ``|W| t`` and ``abs_bias()`` = ``|b|`` on the layer's own
  operands (without the folded input scale).

This is the one linear-map base of the l2 bounds: the layer operators here, and the residual maps
of :mod:`lipcert.bounds.ltnet` (``G_k``, ``Hhat_k``), all derive from :class:`LinearOp`. Layers get
their operator from the adapter table of :mod:`lipcert.bounds.layers`.

An optional per-input-channel ``in_scale`` folds a preceding input normalisation
``(x - mean) / std`` into the operator (the scale 1/std; the shift belongs to the bias), so the
bounds of the first layer are taken on raw [0, 1] pixels without the loose factor 1/min(std).

Masked (reduced) operators ``out_mask * W (in_mask * x)`` (Huang21 Eq. 6) and compositions of
operators are built with :class:`Masked` and :class:`Composed`; power iteration
(:mod:`lipcert.bounds.power`) runs on anything with ``forward`` / ``adjoint``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..numerics import U64, gamma, round_up
from .norm_cache import cached
from .norms import conv_norm_upper, dense_norm_upper


class LinearOp:
    """Base class: a linear map with known input and output shapes (batch dim excluded)."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    norm_kind: str = "upper"
    #: rounded operations along any output entry (Higham's gamma_n)
    fan_in: int
    #: multiply-adds per input vector
    cost: int
    name: str = ""
    #: rounded operations by which a layer *forms* its matrix from its parameters (0: the matrix is
    #: stored as is). A layer with k > 0 states that, in any precision with unit roundoff u, every
    #: computed entry is within gamma_k |entry| of the exact one (e.g. AOL's rescaling, computed
    #: from sums of absolute values); rounding walks then count k more operations per dot product
    #: and norm bounds add gamma_k || |W| ||.
    weight_ops: int = 0
    #: an elementwise bound >= |b| to use in rounding walks instead of |b| (``abs_bias``), for
    #: layers whose bias is formed with cancellation (a folded BatchNorm: ``|s| (|b| + |mean|) + |beta|``);
    #: None: |b|
    abs_bias_bound: Tensor | None = None

    @property
    def in_numel(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_numel(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def abs_forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def row_norms(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def row_abs_sums(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def norm_upper(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def abs_norm_upper(self) -> float:  # pragma: no cover - abstract
        """A provable upper bound of ``|| |W| ||_2`` (|W| entrywise; floating-point slacks)."""
        raise NotImplementedError

    def norm_key(self) -> tuple | None:
        """What the norm bounds depend on besides the matrix ``weight`` (class, shapes, forming), for
        the shared cache of :mod:`lipcert.bounds.norm_cache`; None: the operator is not cached."""
        return None

    def _shared(self, what: str, compute) -> float:
        """``compute()`` (a rigorous bound of ``what`` from ``weight``), shared within a run."""
        key = self.norm_key()
        return cached(None if key is None else (what, *key), (self.weight,), compute)

    def weight_rel_error(self) -> float:
        """Entrywise relative error of the computed matrix ``weight`` against the exact operator:
        a folded input scale (1/std, rounded once in the reciprocal and once in the product: 2u)
        and the layer's own forming (``weight_ops``: gamma_k), compounded."""
        rel = 2.01 * U64 if getattr(self, "in_scale", None) is not None else 0.0
        if self.weight_ops:
            rel = (1 + rel) * (1 + gamma(self.weight_ops)) - 1 + 2 * U64
        return rel

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def dense(self) -> Tensor:
        """The matrix (out_numel, in_numel), built column by column (small operators only)."""
        w = next(iter(self.parameters_like()))
        eye = torch.eye(self.in_numel, dtype=w.dtype, device=w.device).view(self.in_numel, *self.in_shape)
        return self.forward(eye).reshape(self.in_numel, self.out_numel).T

    def parameters_like(self):  # pragma: no cover - abstract
        raise NotImplementedError


def _scale_view(scale: Tensor | None, ndim: int) -> Tensor | None:
    if scale is None:
        return None
    return scale.view(-1, *([1] * (ndim - 1)))


class DenseOp(LinearOp):
    """``x -> W flatten(x)`` for an ``nn.Linear`` weight (out, in); ``in_shape`` may be (C, H, W)."""

    norm_kind = "exact"

    def __init__(self, weight: Tensor, in_shape: Sequence[int] | None = None, in_scale: Tensor | None = None,
                 bias: Tensor | None = None, name: str = "", weight_ops: int = 0,
                 abs_bias_bound: Tensor | None = None) -> None:
        out_f, in_f = weight.shape
        self.abs_bias_bound = abs_bias_bound
        self.in_shape = tuple(int(s) for s in in_shape) if in_shape is not None else (in_f,)
        if math.prod(self.in_shape) != in_f:
            raise ValueError(f"linear layer takes {in_f} features but its input has shape {self.in_shape}")
        self.out_shape = (out_f,)
        self.raw_weight = weight
        self.bias = bias
        self.in_scale = in_scale
        self.name = name
        self.terms = int(in_f)
        self.weight_ops = int(weight_ops)
        # +3: the folded 1/std (two roundings) and slack
        self.fan_in = self.terms + self.weight_ops + 3
        self.cost = out_f * in_f
        if in_scale is not None:
            s = _scale_view(in_scale.to(weight.dtype), len(self.in_shape))
            weight = (weight.view(out_f, *self.in_shape) * s).reshape(out_f, in_f)
        self.weight = weight

    def parameters_like(self):
        return [self.weight]

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.weight.T

    def adjoint(self, y: Tensor) -> Tensor:
        return (y @ self.weight).view(y.shape[0], *self.in_shape)

    def abs_forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) @ self.weight.abs().T

    def row_norms(self) -> Tensor:
        return self.weight.norm(dim=1)

    def row_abs_sums(self) -> Tensor:
        return self.weight.abs().sum(dim=1)

    def dense(self) -> Tensor:
        return self.weight

    def norm_key(self) -> tuple:
        return ("dense", tuple(self.weight.shape), self.weight.dtype, self.weight.device, self.weight_ops)

    def norm_upper(self) -> float:
        up = self._shared("norm", lambda: dense_norm_upper(self.weight))
        return _formed(up, self.weight_ops, self._abs_norm)

    def _abs_norm(self) -> float:
        return self._shared("abs", lambda: dense_norm_upper(self.weight.detach().abs()))

    def abs_norm_upper(self) -> float:
        return _formed(self._abs_norm(), self.weight_ops)

    def abs_raw(self, t: Tensor) -> Tensor:
        """``|W| t`` on the layer's own (flattened) operand, no input scale, no bias."""
        return t.reshape(t.shape[0], -1) @ self.raw_weight.abs().T

    def abs_bias(self) -> Tensor | float:
        if self.abs_bias_bound is not None:
            return self.abs_bias_bound
        return 0.0 if self.bias is None else self.bias.abs()

    def abs_affine(self, t: Tensor) -> Tensor:
        """``|W| t + |b|`` on the layer's own operand (one fused call)."""
        b = self.abs_bias_bound if self.abs_bias_bound is not None else (None if self.bias is None else self.bias.abs())
        return F.linear(t.reshape(t.shape[0], -1), self.raw_weight.abs(), b)


class ConvOp(LinearOp):
    """``x -> conv2d(x, K, stride, padding)`` (no bias) on inputs of shape ``in_shape = (C, H, W)``.

    Zero padding only (``padding_mode='zeros'``), groups = 1, dilation = 1 -- the layers of the
    Huang21 architectures.
    """

    def __init__(
        self,
        weight: Tensor,
        in_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        in_scale: Tensor | None = None,
        bias: Tensor | None = None,
        name: str = "",
        weight_ops: int = 0,
        abs_bias_bound: Tensor | None = None,
    ) -> None:
        self.abs_bias_bound = abs_bias_bound
        self.in_shape = tuple(int(s) for s in in_shape)
        if len(self.in_shape) != 3 or self.in_shape[0] != weight.shape[1]:
            raise ValueError(f"conv with kernel {tuple(weight.shape)} cannot take inputs of shape {self.in_shape}")
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.raw_weight = weight
        self.bias = bias
        self.in_scale = in_scale
        self.name = name
        self.terms = int(math.prod(weight.shape[1:]))
        self.weight_ops = int(weight_ops)
        self.fan_in = self.terms + self.weight_ops + 3  # as DenseOp
        if in_scale is not None:
            weight = weight * in_scale.to(weight.dtype).view(1, -1, 1, 1)
        self.weight = weight
        k = weight.shape[2:]
        out_hw = [(n + 2 * p - kk) // s + 1 for n, p, kk, s in zip(self.in_shape[1:], self.padding, k, self.stride)]
        if min(out_hw) < 1:
            raise ValueError(f"conv kernel {tuple(k)} does not fit inputs {self.in_shape} with padding {self.padding}")
        self.out_shape = (weight.shape[0], *out_hw)
        self.cost = self.out_numel * self.terms
        # conv_transpose2d lands on (out - 1) * s - 2p + k (+ output_padding); pick it to hit in_shape
        self.output_padding = tuple(
            n - ((o - 1) * s - 2 * p + kk) for n, o, s, p, kk in zip(self.in_shape[1:], out_hw, self.stride, self.padding, k)
        )

    def parameters_like(self):
        return [self.weight]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)

    def adjoint(self, y: Tensor) -> Tensor:
        return F.conv_transpose2d(y, self.weight, stride=self.stride, padding=self.padding, output_padding=self.output_padding)

    def abs_forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.abs(), stride=self.stride, padding=self.padding)

    def row_norms(self) -> Tensor:
        """Kernel norm per output channel: bounds every row (border rows have fewer terms)."""
        return self.weight.flatten(1).norm(dim=1).view(-1, 1, 1)

    def row_abs_sums(self) -> Tensor:
        return self.weight.abs().flatten(1).sum(dim=1).view(-1, 1, 1)

    def norm_key(self) -> tuple:
        return ("conv", self.in_shape, self.stride, self.padding, tuple(self.weight.shape), self.weight.dtype,
                self.weight.device, self.weight_ops)

    def norm_upper(self) -> float:
        up = self._shared("norm", lambda: conv_norm_upper(self.weight, self.in_shape, self.stride, self.padding))
        return _formed(up, self.weight_ops, self.abs_norm_upper)

    def abs_norm_upper(self) -> float:
        up = self._shared("abs", lambda: conv_norm_upper(self.weight.detach().abs(), self.in_shape, self.stride, self.padding))
        return _formed(up, self.weight_ops)

    def abs_raw(self, t: Tensor) -> Tensor:
        """``|K| * t`` on the layer's own operand, no input scale, no bias."""
        return F.conv2d(t, self.raw_weight.abs(), stride=self.stride, padding=self.padding)

    def abs_bias(self) -> Tensor | float:
        if self.abs_bias_bound is not None:
            return self.abs_bias_bound.view(-1, 1, 1)
        return 0.0 if self.bias is None else self.bias.abs().view(-1, 1, 1)

    def abs_affine(self, t: Tensor) -> Tensor:
        """``|K| * t + |b|`` on the layer's own operand (one fused call)."""
        b = self.abs_bias_bound if self.abs_bias_bound is not None else (None if self.bias is None else self.bias.abs())
        return F.conv2d(t, self.raw_weight.abs(), b, stride=self.stride, padding=self.padding)


def _formed(bound: float, weight_ops: int, abs_bound=None) -> float:
    """A norm bound of the exact matrix from one of the computed matrix: ``+ gamma_k || |W| ||``
    (``abs_bound`` computes || |W| ||; None: ``bound`` is already of |W|, scale it by 1 + gamma_k)."""
    if weight_ops == 0:
        return bound
    g = gamma(weight_ops)
    extra = bound if abs_bound is None else abs_bound()
    return round_up(bound + g * extra * (1 + 4 * U64))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v  # type: ignore[return-value]


class Masked:
    """The reduced operator ``out_mask * W (in_mask * x)`` of Huang21 Eq. 6, one mask per sample.

    Masks are boolean or 0/1 tensors of shape (B, *in_shape) / (B, *out_shape), or None (keep all).
    """

    def __init__(self, op: LinearOp, in_mask: Tensor | None = None, out_mask: Tensor | None = None) -> None:
        self.op = op
        self.in_shape, self.out_shape = op.in_shape, op.out_shape
        self.in_mask = None if in_mask is None else in_mask.to(_dtype(op))
        self.out_mask = None if out_mask is None else out_mask.to(_dtype(op))

    def select(self, rows: Tensor) -> "Masked":
        """The same operator for a subset of the batch."""
        return Masked(
            self.op,
            None if self.in_mask is None else self.in_mask[rows],
            None if self.out_mask is None else self.out_mask[rows],
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.in_mask is not None:
            x = x * self.in_mask
        y = self.op.forward(x)
        return y if self.out_mask is None else y * self.out_mask

    def adjoint(self, y: Tensor) -> Tensor:
        if self.out_mask is not None:
            y = y * self.out_mask
        x = self.op.adjoint(y)
        return x if self.in_mask is None else x * self.in_mask

    def mask_input(self, x: Tensor) -> Tensor:
        return x if self.in_mask is None else x * self.in_mask

    def mask_output(self, y: Tensor) -> Tensor:
        return y if self.out_mask is None else y * self.out_mask

    __call__ = forward


class Composed:
    """``ops[-1] o ... o ops[0]``: a chain of operators (e.g. several layers) as one operator.

    Power iteration on a composition estimates the norm of the product (Huang21 App. A.2 / Fazlyab23's
    LipLT products) without forming any matrix.
    """

    def __init__(self, ops: Sequence) -> None:
        if not ops:
            raise ValueError("Composed needs at least one operator")
        for a, b in zip(ops, ops[1:]):
            if tuple(a.out_shape) != tuple(b.in_shape):
                raise ValueError(f"cannot compose: {a.out_shape} -> {b.in_shape}")
        self.ops = list(ops)
        self.in_shape, self.out_shape = self.ops[0].in_shape, self.ops[-1].out_shape

    def forward(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        for op in reversed(self.ops):
            y = op.adjoint(y)
        return y

    def select(self, rows: Tensor) -> "Composed":
        return Composed([op.select(rows) if hasattr(op, "select") else op for op in self.ops])

    __call__ = forward


def reference_tensor(op) -> Tensor | None:
    """A weight tensor of an operator (or of the first one inside a Masked / Composed), for its
    dtype and device; None when there is none."""
    if isinstance(getattr(op, "weight", None), Tensor):
        return op.weight
    if hasattr(op, "op"):
        return reference_tensor(op.op)
    if hasattr(op, "ops"):
        return reference_tensor(op.ops[0])
    return None


def _dtype(op) -> torch.dtype:
    w = reference_tensor(op)
    return w.dtype if w is not None else torch.get_default_dtype()


__all__ = ["Composed", "ConvOp", "DenseOp", "LinearOp", "Masked", "reference_tensor"]
