"""Bounds of a trained model for certificates and reports: a float64 copy with rigorous layer bounds.

:class:`L2Bounds` is what ``lipcert.certify`` (l2) and ``lipcert bounds`` use:

* ``global_upper`` -- product of rigorous per-layer bounds (Huang21 Eq. 2), label "upper";
* ``forward(x)`` -- float64 logits with an elementwise rigorous rounding-error bound;
* ``local(x, eps, mode)`` -- the local bound of Huang21 Eq. 6 on the l2 ball of radius eps, with masks
  from *sound* box / ball propagation (outward rounding, rigorous slacks):
  ``mode="estimate"`` -- reduced norms by power iteration run to convergence (Huang21 §4: tolerance
  1e-3 on the singular vector, at most 2000 iterations), each capped by the layer's global upper
  bound: the paper's bound, label "estimate";
  ``mode="upper"`` -- reduced dense layers exact (float64 Gram eigenvalues + slack), conv layers
  at their global upper bound: a provable upper bound, label "upper".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..numerics import U32, U64, float64_copy, gamma
from .chain import ChainForward, LipschitzChain
from .lipschitz import global_kinds, global_upper, local_sigmas, local_upper, product_rows_upper, product_upper

LOCAL_MODES = ("estimate", "upper")


@dataclass
class LocalResult:
    lipschitz: Tensor  # (B,) float64 bound on the ball of radius eps
    sigmas: Tensor  # (B, L) per-layer reduced norms used
    varying: Tensor  # (B, L-1) fraction of varying activation outputs per layer
    iterations: Tensor | None  # (B, L) power iterations (estimate mode)
    kind: str  # "estimate" | "upper"
    last_mask: Tensor | None = None  # (B, D) varying inputs of the last layer (columns that matter)
    last_box: tuple[Tensor, Tensor] | None = None  # sound box of the last layer's input (the propagation's)

    @property
    def prefix(self) -> Tensor:
        """(B,) bound of the layers before the last (rounded up)."""
        return product_rows_upper(self.sigmas[:, :-1])


class L2Bounds:
    """A float64, eval-mode copy of ``model`` with its rigorous per-layer bounds (see module doc)."""

    def __init__(self, model: nn.Module, in_shape=None, device: str | torch.device | None = None) -> None:
        if device is None:
            params = list(model.parameters())
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        self.model = float64_copy(model, self.device, frozen=True)
        self.chain = LipschitzChain.from_model(self.model, in_shape or getattr(model, "in_shape", None))
        self.layer_upper = global_upper(self.chain)
        self.layer_kinds = global_kinds(self.chain)
        self.global_upper = product_upper(self.layer_upper)
        self.prefix_upper = product_upper(self.layer_upper[:-1])  # layers before the last
        self.global_kind = "upper"
        weight, bias = self.chain.last_affine()
        self.last_weight, self.last_bias = weight.detach(), bias.detach()
        self.last_weight_ops = self.chain.stages[-1].op().weight_ops
        scale = 1.0
        norm = self.chain.stages[0].normalize
        if norm is not None:
            scale = float((1.0 / norm.std.to(torch.float64)).abs().max()) * (1 + 4 * U64)  # any sign
        # l2 distance factor from the raw input to the operand of every layer
        self.operand_scale = [scale] + [product_upper(self.layer_upper[:l]) for l in range(1, self.chain.depth)]

    # ----------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[ChainForward, list[Tensor]]:
        """Float64 forward pass and elementwise bounds on its rounding errors (last = logits)."""
        x = x.to(device=self.device, dtype=torch.float64)
        fwd = self.chain.forward(x)
        return fwd, self.chain.forward_error(fwd, layer_norms=self.layer_upper)

    @torch.no_grad()
    def float32_error(self, fwd: ChainForward, err64: list[Tensor], radius: Tensor) -> Tensor:
        """Elementwise bound (B, K) on the logit error of a float32 evaluation (IEEE, any summation
        order; not TF32 / Winograd) at any input within l2 distance ``radius`` (B,) of x."""
        prev = [torch.zeros_like(radius)] + [e.flatten(1).amax(1) for e in err64[:-1]]
        spread = []
        for l, s in enumerate(self.chain.stages):
            d = radius * self.operand_scale[l] * (1 + 4 * U64) + prev[l]
            spread.append(d.view(-1, *([1] * (fwd.operands[l].dim() - 1))))
        return self.chain.forward_error(fwd, U32, spread, self.layer_upper)[-1]

    def row_difference_norms(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Rigorous upper bounds (B, K) of ``||(w_y - w_j) * mask||`` for the last layer's rows
        (0 at j = y): the Lipschitz factor of the logit difference ``z_y - z_j`` through the last
        layer when only the ``mask`` coordinates of its input vary (GloRo's K_yj, Huang21 App. B)."""
        w = self.last_weight
        diff = w[y].unsqueeze(1) - w.unsqueeze(0)  # (B, K, D)
        if mask is not None:
            diff = diff * mask.to(diff.dtype).unsqueeze(1)
        n = diff.shape[-1]
        out = diff.norm(dim=2) * (1 + 2 * (n + 4) * U64)
        if self.last_weight_ops:
            # a formed matrix: each entry within gamma_k |entry| of the exact one, so the exact row
            # difference is within gamma_k (|w_y| + |w_j|) of the computed one (no cancellation)
            rows = w.abs() if mask is None else w.abs().unsqueeze(0) * mask.to(w.dtype).unsqueeze(1)
            norms = rows.norm(dim=-1) * (1 + 2 * (n + 4) * U64)
            own = norms.gather(-1, y.view(-1, 1)) if norms.dim() == 2 else norms[y].unsqueeze(1)
            out = (out + gamma(self.last_weight_ops) * (own + norms) * (1 + 4 * U64)) * (1 + 4 * U64)
        return out

    # ------------------------------------------------------------------- local
    @torch.no_grad()
    def local(
        self,
        x: Tensor,
        eps: float,
        mode: str = "estimate",
        fwd: ChainForward | None = None,
        err64: list[Tensor] | None = None,
        iters: int = 2000,
        tol: float = 1e-3,
        generator: torch.Generator | None = None,
        clip: tuple[float, float] | None = None,
    ) -> LocalResult:
        """Local Lipschitz bound on ``{x' : ||x' - x|| <= eps}`` for every sample (Huang21 Eq. 6);
        with ``clip=(a, b)`` on its part inside the input range ``[a, b]`` (a convex set: the bound
        holds between any two of its points)."""
        if mode not in LOCAL_MODES:
            raise ValueError(f"local bound mode must be one of {LOCAL_MODES}, got {mode!r}")
        x = x.to(device=self.device, dtype=torch.float64)
        if fwd is None or err64 is None:
            fwd, err64 = self.forward(x)
        prop = self.chain.propagate(x, float(eps), fwd, sigmas=self.layer_upper, ball=True, sound=True, fwd_error=err64,
                                   clip=clip)
        masks = self.chain.masks(prop.bounds)
        varying = torch.stack([m[1].flatten(1).double().mean(1) for m in masks], dim=1) if masks else torch.zeros(x.shape[0], 0)
        cap = torch.tensor(self.layer_upper, dtype=torch.float64, device=self.device)
        its = None
        if mode == "estimate":
            sig, its = local_sigmas(self.chain, masks, iters=iters, tol=tol, generator=generator, batch=x.shape[0])
            sig = torch.minimum(sig.detach(), cap)
            kind = "estimate"
        else:
            sig = local_upper(self.chain, masks, self.layer_upper, batch=x.shape[0]).to(self.device)
            kind = "upper"
        last = masks[-1][1].reshape(x.shape[0], -1) if masks else None
        return LocalResult(lipschitz=product_rows_upper(sig), sigmas=sig, varying=varying, iterations=its, kind=kind, last_mask=last,
                           last_box=prop.last_box)


__all__ = ["LOCAL_MODES", "L2Bounds", "LocalResult"]
