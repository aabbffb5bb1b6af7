"""An independent re-implementation of the CRM training step as the authors of Fazlyab23 run it.

Written from the formulas of their public training code (o4lc/CRM-LipLT, train.py and
Losses/CrossEntropy.py, Networks/NetworkModels.py), not copied from it: plain loops, one vector per
composed operator, no batching. Used to check lipcert's ``crm`` objective on identical weights,
batches and power-iteration vectors (tests/losses/test_crm_reference.py, docs/liplt-crm.md).

What it reproduces:

* Spans ``A(s, e) = W_e ... W_s`` (biases dropped, ReLU slope 1/2 kept out as in LipLT) for every
  start s and every hidden end e (s <= e <= L-1); one vector per span at the input of layer s.
* ``iters`` power-iteration steps ``x <- A^T A x / ||A^T A x||`` *with autograd through them*
  (the authors detach the vectors only after the optimiser step), then ``sigma = ||A x||``.
* The ReLU LipLT recursion ``m_e = sum_{j<e} 0.5^(j+1) sigma(e-j, e) m_(e-1-j) + 0.5^e sigma(0, e)``.
* Pairwise constants from exact rows of the last layer: for ``c = e_k - e_j``
  ``L_kj = sum_{i=1..L} 0.5^(L-i+1) ||c^T W_L ... W_i|| m_(i-1) + 0.5^L ||c^T W_L ... W_0||``.
* Radii from the *predicted* class (``margins = z_pred - z``, divided by ``L[pred, :]``, inf at
  pred), rows of correctly classified samples kept; active = ``min R < R0``; robust term
  ``(1/t) sum_active logsumexp_i(-t R_i) / B`` ("softMax", the recipe of their README); total
  ``CE + lam * robust``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv2d / Linear layers of a plain ReLU chain, in order."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_shapes(model: nn.Module, in_shape: tuple[int, ...]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Input and output shapes (without batch) of every weight layer."""
    layers = weight_layers(model)
    shapes, outs, x = [], [], torch.zeros(1, *in_shape, dtype=layers[0].weight.dtype)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            x = x.flatten(1)
        shapes.append(tuple(x.shape[1:]))
        x = apply(layer, x)
        outs.append(tuple(x.shape[1:]))
    return shapes, outs


def apply(layer: nn.Module, x: Tensor) -> Tensor:
    """The linear part of a layer (no bias)."""
    if isinstance(layer, nn.Linear):
        return x.flatten(1) @ layer.weight.T
    return F.conv2d(x, layer.weight, None, layer.stride, layer.padding)


def apply_t(layer: nn.Module, y: Tensor, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Tensor:
    """The adjoint of :func:`apply` (result reshaped to ``in_shape``)."""
    y = y.reshape(y.shape[0], *out_shape)
    if isinstance(layer, nn.Linear):
        return (y @ layer.weight).reshape(y.shape[0], *in_shape)
    out = F.conv_transpose2d(y, layer.weight, None, layer.stride, layer.padding)
    # output_padding: conv_transpose may come out one short for strided convs
    if tuple(out.shape[1:]) != tuple(in_shape):
        full = out.new_zeros(y.shape[0], *in_shape)
        full[:, :, : out.shape[2], : out.shape[3]] = out
        out = full
    return out


class AuthorsCRM:
    """Power-iteration state and the CRM loss of the authors' training step (module docstring)."""

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], iters: int, vectors: dict[tuple[int, int], Tensor]):
        self.model, self.iters = model, iters
        self.layers = weight_layers(model)
        self.shapes, self.out_shapes = layer_shapes(model, in_shape)
        self.vectors = {k: v.detach().clone() for k, v in vectors.items()}  # (s, e) -> (1, *shape_s)

    def span_forward(self, s: int, e: int, x: Tensor) -> Tensor:
        for i in range(s, e + 1):
            x = apply(self.layers[i], x.reshape(x.shape[0], *self.shapes[i]))
        return x

    def span_adjoint(self, s: int, e: int, y: Tensor) -> Tensor:
        for i in range(e, s - 1, -1):
            y = apply_t(self.layers[i], y, self.shapes[i], self.out_shapes[i])
        return y

    def sigmas(self, detach: bool = False) -> dict[tuple[int, int], Tensor]:
        """``||A(s, e) x||`` after ``iters`` steps; ``detach``: no gradient through the iterations."""
        out = {}
        for (s, e), x in self.vectors.items():
            for _ in range(self.iters):
                x = self.span_adjoint(s, e, self.span_forward(s, e, x))
                x = x / x.flatten().norm()
            if detach:
                x = x.detach()
            self.vectors[(s, e)] = x.detach()
            out[(s, e)] = self.span_forward(s, e, x).flatten().norm()
        return out

    def pairwise(self, detach: bool = False) -> tuple[Tensor, list[Tensor]]:
        """(K, K) LipLT pairwise constants (1 on the diagonal, as the authors' selfPairDefaultValue)."""
        sig = self.sigmas(detach)
        L = len(self.layers) - 1
        m: list[Tensor] = []
        for e in range(L):
            val = 0.5**e * sig[(0, e)]
            for j in range(e):
                val = val + 0.5 ** (j + 1) * sig[(e - j, e)] * m[e - 1 - j]
            m.append(val)
        w_last = self.layers[-1].weight
        k = w_last.shape[0]
        out = torch.ones(k, k, dtype=w_last.dtype)
        rows = []
        for a in range(k):
            for b in range(a + 1, k):
                c = torch.zeros(1, k, dtype=w_last.dtype)
                c[0, a], c[0, b] = 1.0, -1.0
                total, y = 0.0, c
                for i in range(L, -1, -1):
                    y = apply_t(self.layers[i], y, self.shapes[i], self.out_shapes[i])
                    norm = y.flatten().norm()
                    if i >= 1:
                        total = total + 0.5 ** (L - i + 1) * norm * m[i - 1]
                    else:
                        total = total + 0.5**L * norm
                rows.append((a, b, total))
        full = torch.stack([t for _, _, t in rows])
        idx = torch.tensor([[a, b] for a, b, _ in rows])
        out = out.index_put((idx[:, 0], idx[:, 1]), full).index_put((idx[:, 1], idx[:, 0]), full)
        return out, m

    def loss(self, x: Tensor, y: Tensor, t: float, lam: float, r0: float, detach: bool = False) -> dict[str, Tensor]:
        """The authors' training loss on one batch (module docstring)."""
        out = self.model(x)
        pred = out.argmax(1)
        b = x.shape[0]
        margins = out[torch.arange(b), pred].unsqueeze(1) - out
        pair, m = self.pairwise(detach)
        radii = margins / pair[pred, :]
        radii = radii.masked_fill(F.one_hot(pred, out.shape[1]).bool(), math.inf)
        correct = pred == y
        radii = radii[correct]
        rmin = radii.min(1).values
        small = rmin < r0
        keep = radii[small]
        keep = keep[keep != math.inf].reshape(keep.shape[0], out.shape[1] - 1)
        robust = (torch.logsumexp(-t * keep, 1).sum() / t) / b if keep.shape[0] else out.new_zeros(())
        ce = F.cross_entropy(out, y)
        active = torch.zeros(b, dtype=torch.bool)
        active[torch.nonzero(correct).flatten()[small]] = True
        return {"loss": ce + lam * robust, "ce": ce, "robust": robust, "pairwise": pair, "active": active,
                "min_radius": torch.full((b,), math.inf, dtype=out.dtype).masked_scatter(correct, rmin.detach()), "hidden": torch.stack(m)}
