"""Almost-orthogonal linear layers (AOL; Prach & Lampert 2022, "Almost-Orthogonal Layers for
Efficient General-Purpose Lipschitz Networks", ECCV, Theorem 1).

``y = W D x + b`` with a diagonal rescaling ``D`` computed from ``W`` so that ``||W D||_2 <= 1``
for every ``W``: training needs no projection, no power iteration and no spectral penalty.

AOL's Theorem 1 takes ``D_jj = (sum_i |W^T W|_ij)^(-1/2)``. lipcert uses the entrywise larger Gram
of ``|W|``, ``D_jj = (sum_i (|W|^T |W|)_ij)^(-1/2) = ((|W|^T (|W| 1))_j)^(-1/2)``: the same Schur
test (with weights ``1 / D_jj``) still gives ``||W D|| <= 1``, the rescaling is only slightly
stronger, and it is computed from sums of non-negative numbers, so every computed entry of
``W D`` is within ``gamma_k`` *relative* of the exact one in any precision (k = in + out + 4: the
two sums, the square root, the reciprocal and the product) -- the layer states this as its
operator's ``weight_ops``, and lipcert's rounding walks and norm bounds count it. The certificate
is then about the exact function ``x -> W D(W) x + b`` of the stored ``W`` and ``b``, and covers
its float32 and float64 evaluations alike (IEEE arithmetic; not TF32).

The l2 bounds read the layer through :meth:`AOLLinear.l2_linear` (the adapter table of
:mod:`lipcert.bounds.layers` finds it there): nothing else in lipcert knows about AOL. Certificates
never rely on the theorem: they bound the computed matrix's norm rigorously.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: floor of the column sums (an all-zero column gets a finite scale; the clamp is exact)
_TINY = 1e-30


def aol_scale(weight: Tensor) -> Tensor:
    """``D_jj = ((|W|^T (|W| 1))_j)^(-1/2)`` for ``weight`` (out, in): shape (in,).

    Elementwise products and sums only (no matmul, so no TF32 even where it is enabled)."""
    a = weight.abs()
    r = a.sum(dim=1)  # (out,): |W| 1
    s = (a * r[:, None]).sum(dim=0)  # (in,): |W|^T r
    return 1.0 / torch.sqrt(s.clamp_min(_TINY))


class AOLLinear(nn.Module):
    """A dense layer ``y = W D(W) x + b`` with ``||W D(W)||_2 <= 1`` (module docstring).

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: learn a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # orthogonal initialisation: W D starts close to an isometry on its row space
        nn.init.orthogonal_(self.weight)

    def effective_weight(self) -> Tensor:
        """``W D(W)``, the matrix the layer applies, computed as :func:`aol_scale` says."""
        return self.weight * aol_scale(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @property
    def weight_ops(self) -> int:
        """Rounded operations in forming every entry of ``W D`` (two sums, sqrt, reciprocal, product)."""
        return self.in_features + self.out_features + 4

    def l2_linear(self) -> dict:
        """The layer's linear part, as the l2 bounds read it (:func:`lipcert.bounds.layers.affine_op`):
        the matrix it applies, its bias, and the rounded operations of forming the matrix."""
        return {"weight": self.effective_weight(), "bias": self.bias, "weight_ops": self.weight_ops}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


__all__ = ["AOLLinear", "aol_scale"]
