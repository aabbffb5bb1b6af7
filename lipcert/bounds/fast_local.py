"""Training-only fast path of the local Lipschitz bound (Huang21 Algorithm 1). Estimates, never proofs.

:class:`~lipcert.train.objectives_l2.LipschitzObjective` calls these with ``fast: true`` (its
default); ``lipcert.certify`` and :class:`~lipcert.bounds.analysis.L2Bounds` never do: they keep
``LipschitzChain.propagate(..., sound=True)``, :func:`~lipcert.bounds.lipschitz.local_sigmas`
and the float64 norm bounds, unchanged.

The functions compute the *same quantities* as the reference path (``LipschitzChain.ops`` /
``propagate(sound=False)`` / ``masks`` / ``local_sigmas``), in float32, with less work:

* one set of operators per step (:func:`training_ops`), shared by the global power iteration,
  the box / ball propagation and the local power iteration; convolutions are
  :class:`FastConvOp`, whose adjoint (and input gradient) is the polyphase convolution of
  :mod:`lipcert.bounds.fastconv` (2-8x faster than ``conv_transpose2d`` on CPU for thin layers),
  its kernel built once per step;
* the forward pass (:func:`forward_fast`) with the same fast convolutions;
* the first stage's box needs no convolution: its centre is the clean pre-activation the forward
  pass already computed, its radius ``eps |W| 1`` is the same for every sample (batch of one);
* interval intersection by :func:`lipcert.nn.elementwise.maximum` / ``minimum`` (the same
  values as torch's, a backward without boolean masks, which are slow on CPU), as the
  activations' forward and box rules do;
* power iteration without the redundant masking (``u`` stays in the input mask and ``A u`` in
  the output mask, so masking them again changes nothing) and without normalising ``A u`` inside
  the loop (``A^T A u`` is normalised instead: the same direction); masks made floats once,
  by the propagation.

Differences to the reference path are floating-point rounding (summation order of the
convolutions, ``eps`` vs ``((x + eps) - (x - eps)) / 2``) and, on ties of exactly equal floats
(measure zero), which side of a ``max`` / ``min`` receives the gradient. Tests
(``tests/bounds/test_fast_local.py``) compare loss and gradients with the reference path on random
and briefly trained nets: relative difference <= 1e-4.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn import elementwise
from ..nn.activations import ReLU, ReLUTheta
from .chain import ChainForward, LipschitzChain, Propagation
from .fastconv import adjoint_kernel, conv_adjoint, fast_conv2d
from .lipschitz import check_layers
from .operators import ConvOp, LinearOp
from .power import _TINY, VectorStore

_TINY_START = 1e-20


class FastConvOp(ConvOp):
    """A :class:`ConvOp` whose forward / abs_forward have a fast input gradient and whose adjoint is
    the polyphase convolution (kernel cached on first use without gradients). Training only."""

    _adj: Tensor | None = None

    @classmethod
    def wrap(cls, op: ConvOp) -> "FastConvOp":
        new = copy.copy(op)
        new.__class__ = cls
        new._adj = None
        return new

    def forward(self, x: Tensor) -> Tensor:
        return fast_conv2d(x, self.weight, self.stride, self.padding)

    def abs_forward(self, x: Tensor) -> Tensor:
        return fast_conv2d(x, self.weight.abs(), self.stride, self.padding)

    def adjoint(self, y: Tensor) -> Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return conv_adjoint(y, adjoint_kernel(self.weight, self.stride), self.in_shape, self.stride, self.padding)
        if self._adj is None:
            self._adj = adjoint_kernel(self.weight.detach(), self.stride)
        return conv_adjoint(y, self._adj, self.in_shape, self.stride, self.padding)


def training_ops(chain: LipschitzChain) -> list[LinearOp]:
    """The chain's operators for one training step (convolutions as :class:`FastConvOp`)."""
    return [FastConvOp.wrap(op) if isinstance(op, ConvOp) else op for op in chain.ops()]


def _linear(op: LinearOp, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``weight`` (the operator's shape) applied as ``op`` applies its own, plus ``bias``."""
    if isinstance(op, ConvOp):
        return fast_conv2d(x, weight, op.stride, op.padding, bias)
    return F.linear(x.reshape(x.shape[0], -1), weight, bias)


def _box_decides_masks(act) -> bool:
    """Whether an output of ``act`` varies iff its output box has positive width: ReLU, and
    ReLU-theta with every theta > 0 (then ``hi > lo`` after the activation is its ``varying``
    rule ``hi > 0, lo < theta, hi > lo``)."""
    if type(act) is ReLU:
        return True
    return type(act) is ReLUTheta and bool((act.theta.detach() > 0).all())


def forward_fast(chain: LipschitzChain, x: Tensor, ops: list[LinearOp] | None = None) -> ChainForward:
    """``chain.forward(x)`` with the same values; convolutions through :func:`fast_conv2d` (fast
    input gradient). ``ops``: the step's operators (:func:`training_ops`), so the layers' matrices
    are formed once per step."""
    pre, post, operands = [], [], []
    h = x
    ops = ops if ops is not None else chain.ops()
    for s, op in zip(chain.stages, ops):
        o = s.operand(h)
        if isinstance(op, ConvOp):  # raw_weight: the kernel before any folded input scale
            z = fast_conv2d(o, op.raw_weight, op.stride, op.padding, op.bias)
        else:  # what the layer computes (its stated linear part), with the matrix formed once
            z = F.linear(o.reshape(o.shape[0], -1), op.raw_weight, op.bias)
        operands.append(o)
        pre.append(z)
        if s.act is not None:
            h = s.act(z)
            post.append(h)
        else:
            h = z
    return ChainForward(logits=h, pre=pre, post=post, operands=operands)


def propagate_fast(
    chain: LipschitzChain,
    x: Tensor,
    eps: float,
    fwd: ChainForward,
    sigmas: Tensor,
    ops: list[LinearOp],
) -> tuple[Propagation, list[tuple[Tensor, Tensor]]]:
    """``chain.propagate(x, eps, fwd, sigmas, ball=True)`` (not sound; module docstring) and
    ``chain.masks`` of its bounds as 0/1 tensors of x's dtype (the same tensor twice where the
    activation's two masks coincide), with the operators ``ops`` from :func:`training_ops`.
    ``eps`` > 0 is a float, ``sigmas`` (L,).

    Stage 0: the box centre is the clean pre-activation z and the box radius ``eps |W| 1`` is
    shared by all samples, so box and ball intersect to ``z -+ min(eps |W| 1, eps ||W_i||)``.
    Later stages: ``W (lo + hi) / 2 + b`` and ``|W| (hi - lo) / 2`` with the 1/2 folded into the
    weights (exact in binary floating point). For ReLU / ReLU-theta (theta > 0) an output varies
    iff its output box has positive width -- the same as the activation's ``varying`` rule
    (``hi > 0, lo < theta, hi > lo``).
    """
    dev, dtype = x.device, x.dtype
    rho = torch.as_tensor(float(eps), dtype=dtype, device=dev)
    rhos = [rho.expand(x.shape[0])]
    bounds: list[tuple[Tensor, Tensor]] = []
    masks: list[tuple[Tensor, Tensor]] = []
    lo = hi = None
    for l, s in enumerate(chain.stages[:-1]):
        op = ops[l]
        z = fwd.pre[l]
        brad = op.row_norms() * rho
        if l == 0:
            ones = torch.full((1, *op.in_shape), float(eps), dtype=dtype, device=dev)
            rad = op.abs_forward(ones).reshape(1, *z.shape[1:])
            r0 = torch.minimum(rad, brad.expand_as(rad))
            plo, phi = z - r0, z + r0
        else:
            c = _linear(op, lo + hi, op.weight * 0.5, op.bias).reshape(z.shape)
            rad = _linear(op, hi - lo, op.weight.abs() * 0.5).reshape(z.shape)
            box_lo, ball_lo = c - rad, z - brad
            box_hi, ball_hi = c + rad, z + brad
            plo, phi = elementwise.maximum(box_lo, ball_lo), elementwise.minimum(box_hi, ball_hi)
        bounds.append((plo, phi))
        lo, hi = s.act.box(plo, phi)
        with torch.no_grad():
            if _box_decides_masks(s.act):
                mf = torch.sub(hi, lo).gt_(0.0)  # hi > lo as 0/1 floats (exact: fl(hi - lo) > 0 iff hi > lo)
                masks.append((mf, mf))
            else:
                im, om = s.act.varying(plo, phi)
                imf = im.to(dtype)
                masks.append((imf, imf if om is im else om.to(dtype)))
        rho = rho * sigmas[l]
        rhos.append(rho.expand(x.shape[0]))
    return Propagation(bounds=bounds, last_box=(lo, hi), rho=rhos), masks


def _norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def _masked_power(
    op: LinearOp,
    in_m: Tensor | None,
    out_m: Tensor | None,
    u0: Tensor | None,
    v0: Tensor | None,
    batch: int,
    iters: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Power iteration on ``out_m * W (in_m * .)`` for every sample: ``(sigma, u, v)`` as
    :func:`lipcert.bounds.power.power_iteration` with ``tol=None`` (module docstring)."""
    dtype = op.weight.dtype
    dev = op.weight.device
    with torch.no_grad():
        if u0 is None and v0 is not None:
            v = v0.to(dtype)
            if out_m is not None:
                v = v * out_m
            u = op.adjoint(v)
        else:
            u = u0.to(dtype) if u0 is not None else torch.zeros(batch, *op.in_shape, dtype=dtype, device=dev)
        if in_m is not None:
            u = u * in_m
        n = _norm(u)
        dead = n.flatten() <= _TINY_START
        if bool(dead.any()):
            rows = dead.nonzero().flatten()
            rnd = torch.randn((rows.numel(), *op.in_shape), generator=generator, dtype=dtype, device=dev)
            if in_m is not None:
                rnd = rnd * in_m[rows]
            u = u.clone()
            u[rows] = rnd
            n = _norm(u)
        u = u / n.clamp_min(_TINY)
        for _ in range(iters):  # in place: no gradients here, and fewer large temporaries
            w = op.forward(u)
            if out_m is not None:
                w.mul_(out_m)
            u = op.adjoint(w)
            if in_m is not None:
                u.mul_(in_m)
            u.div_(_norm(u).clamp_min(_TINY))
    au = op.forward(u)
    if out_m is not None:
        au = au * out_m
    sigma = au.flatten(1).norm(dim=1)
    with torch.no_grad():
        v = au.detach() / sigma.detach().clamp_min(_TINY).view(-1, *([1] * (au.dim() - 1)))
    return sigma, u, v


def local_sigmas_fast(
    chain: LipschitzChain,
    masks: list[tuple[Tensor, Tensor]],
    ops: list[LinearOp],
    iters: int = 1,
    store: VectorStore | None = None,
    index: Tensor | None = None,
    generator: torch.Generator | None = None,
    layers: Sequence[int] | None = None,
) -> Tensor:
    """``local_sigmas(chain, masks, iters, store, index, layers=layers)[0]`` (B, L), or (B,
    len(layers)) for the listed layers only, with the float ``masks`` of :func:`propagate_fast` and
    ``ops`` from :func:`training_ops` (module docstring)."""
    batch = masks[0][0].shape[0]
    sig = []
    for l in check_layers(layers, len(ops)) if layers is not None else range(len(ops)):
        op = ops[l]
        in_m = masks[l - 1][1] if l > 0 else None
        out_m = masks[l][0] if l < len(masks) else None
        side = "in" if op.in_numel <= op.out_numel else "out"
        key = f"l{l}"
        u0 = v0 = None
        if store is not None and index is not None:
            shape = op.in_shape if side == "in" else op.out_shape
            vec = store.get(key, index, shape, op.weight.device)
            u0, v0 = (vec, None) if side == "in" else (None, vec)
        s, u, v = _masked_power(op, in_m, out_m, u0, v0, batch, iters, generator)
        if store is not None and index is not None:
            store.put(key, index, u if side == "in" else v)
        sig.append(s)
    return torch.stack(sig, dim=1)


__all__ = ["FastConvOp", "forward_fast", "local_sigmas_fast", "propagate_fast", "training_ops"]
