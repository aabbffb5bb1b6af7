"""A feed-forward network seen as a chain of (affine layer, activation) stages.

:class:`LipschitzChain` reads a plain ``nn.Sequential`` of ``InputNormalize`` / ``Flatten`` /
``Conv2d`` / ``Linear`` layers and activations from :mod:`lipcert.nn.activations` (or
``nn.ReLU``) and exposes what the l2 bounds need:

* ``forward(x)`` -- logits plus every pre- and post-activation (the model's own computation);
* ``ops()`` -- one :class:`~lipcert.bounds.operators.LinearOp` per affine layer on its real
  input shape, the input normalisation's 1/std folded into the first one;
* ``propagate(x, eps, ...)`` -- box (interval) bounds intersected with BCP ball bounds of every
  pre-activation for inputs in the l2 ball of radius eps (Huang21 App. B, Eq. 21-23), optionally
  *sound* in floating point (outward rounding with rigorous slacks, float64 chains);
* ``masks(bounds)`` -- per-sample activation-status masks (Huang21 Eq. 3 / 9);
* ``reduced(masks)`` -- the reduced operators ``I_V^l W^l I_V^(l-1)`` of Huang21 Eq. 6;
* ``forward_error(...)`` -- an elementwise rigorous bound on the rounding error of the computed
  pre-activations and logits (for the certificate's floating-point slack).

The chain holds no state of its own; operators are rebuilt from the current weights on every call,
so gradients flow into the model's parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..numerics import U32, U64, gamma, outward
from .layers import as_activation
from .network import Block, parse
from .operators import LinearOp, Masked


class ChainError(ValueError):
    """The model is not a chain of layers the l2 bounds understand."""


class Stage(Block):
    """One block of :mod:`lipcert.bounds.network` as Huang21's chains see it: an affine layer
    (``main``), the shape-only / normalising layers before it, and the activation after it (None
    for the last layer)."""

    def affine(self, h: Tensor) -> Tensor:
        return self.main(self.operand(h))


@dataclass
class ChainForward:
    logits: Tensor
    pre: list[Tensor]  # pre-activation of every stage (pre[-1] = logits)
    post: list[Tensor]  # post-activation of every hidden stage
    operands: list[Tensor] = field(default_factory=list)  # what each main layer saw


@dataclass
class Propagation:
    bounds: list[tuple[Tensor, Tensor]]  # (lo, hi) of every hidden pre-activation
    last_box: tuple[Tensor, Tensor]  # box of the input of the last layer
    rho: list[Tensor]  # ball radius at the input of every stage (rho[0] = eps)


class LipschitzChain:
    """A model viewed as ``W_L o act o ... o act o W_1`` (see module docstring)."""

    def __init__(self, stages: list[Stage], in_shape: tuple[int, ...]) -> None:
        if not stages:
            raise ChainError("the model has no Linear / Conv2d layer")
        if stages[-1].act is not None:
            raise ChainError("the model must end with a Linear layer (logits), not an activation")
        self.stages = stages
        self.in_shape = in_shape

    # --------------------------------------------------------------- building
    @classmethod
    def from_model(cls, model: nn.Module, in_shape: Sequence[int] | None = None) -> "LipschitzChain":
        """Read ``model`` with :func:`lipcert.bounds.network.parse`; Huang21's chains add one rule: an
        activation after every affine layer but the last."""
        net = parse(model, in_shape, error=ChainError, residual=False)
        stages = []
        for i, b in enumerate(net.blocks):
            if b.act is None and i < len(net.blocks) - 1:
                raise ChainError(
                    f"{type(net.blocks[i + 1].main).__name__} follows a Linear / Conv2d layer without an activation in "
                    "between; the l2 chain bounds need an activation after every layer but the last (merge the two "
                    "layers, or certify with a pairwise bound: bound='naive' / 'liplt')"
                )
            act = None if b.act is None else as_activation(b.act)
            stages.append(Stage(pre=b.pre, main=b.main, kind=b.kind, in_shape=b.in_shape, operand_shape=b.operand_shape,
                                out_shape=b.out_shape, act=act))
        return cls(stages, net.in_shape)

    @property
    def depth(self) -> int:
        return len(self.stages)

    def ops(self) -> list[LinearOp]:
        """Linear parts of every layer, from the current weights."""
        return [s.op() for s in self.stages]

    def activations(self) -> list[nn.Module]:
        return [s.act for s in self.stages[:-1]]

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> ChainForward:
        pre, post, operands = [], [], []
        h = x
        for s in self.stages:
            o = s.operand(h)
            z = s.main(o)
            operands.append(o)
            pre.append(z)
            if s.act is not None:
                h = s.act(z)
                post.append(h)
            else:
                h = z
        return ChainForward(logits=h, pre=pre, post=post, operands=operands)

    def last_affine(self) -> tuple[Tensor, Tensor]:
        """Weight (K, D) on the flattened input of the last layer and its effective bias (K,)."""
        s = self.stages[-1]
        op = s.op()
        zero = torch.zeros(1, *s.in_shape, dtype=op.weight.dtype, device=op.weight.device)
        bias = s.affine(zero)[0]
        return op.weight.reshape(op.weight.shape[0], -1), bias

    # -------------------------------------------------------- interval bounds
    def propagate(
        self,
        x: Tensor,
        eps: float | Tensor,
        fwd: ChainForward | None = None,
        sigmas: Tensor | Sequence[float] | None = None,
        ball: bool = True,
        sound: bool = False,
        fwd_error: list[Tensor] | None = None,
        clip: tuple[float, float] | None = None,
    ) -> Propagation:
        """Bounds of every hidden pre-activation for all inputs within l2 distance ``eps`` of x
        (and, with ``clip=(a, b)``, inside the input range ``[a, b]``: the input box is clipped to it).

        Box: interval propagation of ``[x - eps, x + eps]`` (IBP; midpoint / radius form, Huang21
        Eq. 23 left). Ball (BCP, Huang21 Eq. 21-23): the input of stage l lies in the l2 ball of radius
        ``rho_l = eps * prod_{k<l} sigmas[k]`` around the clean activation, so pre-activation i
        lies within ``||W_i|| rho_l`` of its clean value; the two are intersected. ``sigmas`` are
        per-layer norm bounds (L,) or per-sample (B, L); with ``sound=True`` they must be
        rigorous upper bounds, the chain must be float64, and ``fwd_error`` (from
        :meth:`forward_error`) must bound the rounding error of ``fwd``: every interval is then
        widened by rigorous rounding slacks so it contains the exact real-arithmetic values.
        """
        if fwd is None:
            fwd = self.forward(x)
        dtype = x.dtype
        eps_t = torch.as_tensor(eps, dtype=dtype, device=x.device)
        if eps_t.dim() == 0:
            eps_t = eps_t.expand(x.shape[0])
        if sound and dtype != torch.float64:
            raise ChainError("sound propagation needs a float64 chain and input")
        view = (-1,) + (1,) * (x.dim() - 1)
        lo = x - eps_t.view(view)
        hi = x + eps_t.view(view)
        if sound:
            lo, hi = outward(lo, hi)
        if clip is not None:  # exact operations: the box of the inputs in the ball and in [a, b]
            lo, hi = lo.clamp_min(clip[0]), hi.clamp_max(clip[1])
        rho = eps_t
        rhos = [rho]
        if sigmas is not None and not isinstance(sigmas, Tensor):
            sigmas = torch.tensor(list(sigmas), dtype=dtype, device=x.device)
        bounds: list[tuple[Tensor, Tensor]] = []
        for l, s in enumerate(self.stages[:-1]):
            op = s.op()
            m = (lo + hi) / 2
            r = (hi - lo) / 2
            if sound:
                r = r * (1 + 4 * U64) + 2 * U64 * m.abs()
            c = s.affine(m)
            rad = op.abs_forward(r)
            if sound:
                g = gamma(op.fan_in, U64)  # the dot product, the layer's own forming, the folded scale
                rad = rad * (1 + g) + g * (op.abs_raw(s.operand(m).abs()) + op.abs_bias())
            plo, phi = c - rad, c + rad
            if sound:
                # no rounding happens where every operand is zero: keep such intervals exact
                plo, phi = outward(plo, phi, active=(rad > 0) | (c != 0))
            if ball and sigmas is not None:
                z = fwd.pre[l]
                rn = op.row_norms()
                rview = rho.reshape(-1, *([1] * (z.dim() - 1))) if rho.dim() else rho
                brad = rn * rview
                blo, bhi = z - brad, z + brad
                if sound:
                    brad = brad * (1 + gamma(op.fan_in + 1, U64))
                    if fwd_error is not None:
                        brad = brad + fwd_error[l]
                    blo, bhi = outward(z - brad, z + brad)
                plo = torch.maximum(plo, blo)
                phi = torch.minimum(phi, bhi)
            bounds.append((plo, phi))
            lo, hi = s.act.box(plo, phi)
            if sigmas is not None:
                sig = sigmas[..., l]
                rho = rho * sig
                if sound:
                    rho = rho * (1 + 4 * U64)
            rhos.append(rho)
        return Propagation(bounds=bounds, last_box=(lo, hi), rho=rhos)

    def masks(self, bounds: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """(in_mask, out_mask) of every activation: inputs that matter / outputs that vary."""
        with torch.no_grad():
            return [s.act.varying(lo, hi) for s, (lo, hi) in zip(self.stages[:-1], bounds)]

    def reduced(self, masks: list[tuple[Tensor, Tensor]], ops: list[LinearOp] | None = None) -> list[Masked]:
        """Reduced operators ``I^l W^l I^(l-1)`` (Huang21 Eq. 6): rows of W^l kept where the next
        activation's inputs matter, columns where the previous activation's outputs vary."""
        ops = ops or self.ops()
        out = []
        for l, op in enumerate(ops):
            col = masks[l - 1][1] if l > 0 else None
            row = masks[l][0] if l < len(masks) else None
            out.append(Masked(op, in_mask=col, out_mask=row))
        return out

    # ----------------------------------------------------------- rounding
    def forward_error(
        self,
        fwd: ChainForward,
        unit: float = U64,
        spread: Sequence[Tensor | float] | None = None,
        layer_norms: Sequence[float] | None = None,
    ) -> list[Tensor]:
        """Elementwise bounds on |computed - exact| of every pre-activation (last = logits).

        For ``y = W o + b`` in floating point with unit roundoff ``unit`` (any summation order):
        the new error of a layer is at most ``d = gamma_(n+3) (|W| |o| + |b|)`` elementwise (n the
        fan-in; three more units cover the input normalisation and the bias). Earlier errors
        propagate in two rigorous ways and the smaller bound is kept: elementwise through ``|W|``
        and the activations' ``error_rule``; and in l2 through the layers' norm bounds
        ``layer_norms`` (rigorous upper bounds; activations are 1-Lipschitz), which is much
        tighter for deep nets: ``e_l <= ||W_l|| e_(l-1) + ||d_l||``. With ``spread`` (an l2
        distance per stage input, e.g. ``r * L_prefix``, scalar or per sample) operand magnitudes
        are enlarged by it, so the bound covers the evaluation at every input within that
        distance (used for "float32 inference anywhere in the certified ball").
        """
        errs: list[Tensor] = []
        e_post: Tensor | None = None
        l2_prev: Tensor | None = None
        for l, s in enumerate(self.stages):
            o = fwd.operands[l].abs()
            if spread is not None:
                o = o + spread[l]
            op = s.op()  # abs_raw / abs_bias act on the layer's own operand (no folded scale)
            g = gamma(op.fan_in, unit)
            d = g * (op.abs_raw(o) + op.abs_bias()) * (1 + 4 * U64)
            e = d
            if e_post is not None:
                e = e + op.abs_raw(s.operand(e_post)) * (1 + 2 * g)
            if layer_norms is not None:
                l2_new = d.flatten(1).norm(dim=1) * (1 + 4 * U64)
                l2 = l2_new if l2_prev is None else l2_new + l2_prev * layer_norms[l] * (1 + 4 * U64)
                e = torch.minimum(e, l2.view(-1, *([1] * (e.dim() - 1))))
                l2_prev = l2
            errs.append(e)
            if s.act is not None:
                e_post = s.act.error_rule(e)
        return errs


__all__ = ["ChainError", "ChainForward", "LipschitzChain", "Propagation", "Stage", "U32", "U64"]
