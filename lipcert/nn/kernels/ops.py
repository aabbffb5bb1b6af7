"""Register an l_p-distance implementation as a differentiable torch custom op.

:func:`define_lp_dist_op` wraps four plain functions (p = inf forward with argmax, finite-p
forward, and their backwards) into ``lipcert::<name>(x, w, p) -> (y, aux)`` plus
``lipcert::<name>_backward``, with :func:`torch.library.custom_op`, ``register_fake`` and
``register_autograd``. Eager mode, autograd and ``torch.compile`` then all see one opaque op
(dynamo does not trace into the kernels, and fake tensors give the output shapes).
``aux`` is the int32 argmax (B, N) for p = inf, which the O(B*N) scatter backward needs. For
finite p the backward recomputes from (x, w, y); ``aux`` is then the float32 y when the inputs
are bfloat16/float16 (so the backward does not use the rounded y) and an empty tensor otherwise.
Kernels may compute in float32; results are cast back to the input dtypes here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


_LOW = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class KernelImpl:
    """Raw (no autograd) kernels of one backend; backwards return None for unneeded grads."""

    linf_forward: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    lp_forward: Callable[[Tensor, Tensor, float], Tensor]
    linf_backward: Callable[..., tuple[Tensor | None, Tensor | None]]
    lp_backward: Callable[..., tuple[Tensor | None, Tensor | None]]
    linf_values: Callable[[Tensor, Tensor], Tensor] | None = None  # p = inf without the argmax


def define_lp_dist_op(name: str, device_types: str, impl: KernelImpl) -> Callable[[Tensor, Tensor, float], Tensor]:
    """Register ``lipcert::name`` and return ``lp_dist(x, w, p) -> y`` that calls it."""

    @torch.library.custom_op(f"lipcert::{name}", mutates_args=(), device_types=device_types)
    def fwd(x: Tensor, w: Tensor, p: float) -> tuple[Tensor, Tensor]:
        if math.isinf(p):
            y, am = impl.linf_forward(x, w)
            return y.to(x.dtype), am
        y = impl.lp_forward(x, w, p)
        if x.dtype in _LOW:
            return y.to(x.dtype), y.float()
        return y.to(x.dtype), torch.empty(0, dtype=torch.int32, device=x.device)

    @fwd.register_fake
    def _(x: Tensor, w: Tensor, p: float) -> tuple[Tensor, Tensor]:
        y = x.new_empty(x.shape[0], w.shape[0])
        if math.isinf(p):
            return y, x.new_empty((x.shape[0], w.shape[0]), dtype=torch.int32)
        if x.dtype in _LOW:
            return y, x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)
        return y, x.new_empty((0,), dtype=torch.int32)

    @torch.library.custom_op(f"lipcert::{name}_backward", mutates_args=(), device_types=device_types)
    def bwd(
        g: Tensor, x: Tensor, w: Tensor, y: Tensor, aux: Tensor, p: float, need_x: bool, need_w: bool
    ) -> tuple[Tensor, Tensor]:
        if math.isinf(p):
            gx, gw = impl.linf_backward(g, x, w, aux, need_x, need_w)
        else:
            gx, gw = impl.lp_backward(g, x, w, aux if aux.is_floating_point() else y, p, need_x, need_w)
        gx = gx.to(x.dtype) if gx is not None else x.new_empty(0)
        gw = gw.to(w.dtype) if gw is not None else w.new_empty(0)
        return gx, gw

    @bwd.register_fake
    def _(g, x, w, y, aux, p, need_x, need_w):
        return (x.new_empty(x.shape) if need_x else x.new_empty(0)), (w.new_empty(w.shape) if need_w else w.new_empty(0))

    def setup_context(ctx, inputs, output) -> None:
        x, w, p = inputs
        y, aux = output
        ctx.save_for_backward(x, w, y, aux)
        ctx.p = p
        ctx.mark_non_differentiable(aux)

    def backward(ctx, grad_y: Tensor, _grad_aux):
        x, w, y, aux = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_y is None or not (need_x or need_w):
            return None, None, None
        gx, gw = bwd(grad_y, x, w, y, aux, ctx.p, need_x, need_w)
        return (gx if need_x else None), (gw if need_w else None), None

    fwd.register_autograd(backward, setup_context=setup_context)

    values_op = None
    if impl.linf_values is not None:
        linf_values = impl.linf_values

        @torch.library.custom_op(f"lipcert::{name}_linf_values", mutates_args=(), device_types=device_types)
        def values_op(x: Tensor, w: Tensor) -> Tensor:
            return linf_values(x, w).to(x.dtype)

        @values_op.register_fake
        def _(x: Tensor, w: Tensor) -> Tensor:
            return x.new_empty(x.shape[0], w.shape[0])

    def lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
        p = float(p)
        if values_op is not None and p == math.inf:  # (not math.isinf: dynamo traces p symbolically)
            if not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
                return values_op(x, w)  # inference: the argmax (needed only by backward) is skipped
        return fwd(x, w, p)[0]

    lp_dist.op = fwd  # type: ignore[attr-defined]
    lp_dist.values_op = values_op  # type: ignore[attr-defined]
    lp_dist.backward_op = bwd  # type: ignore[attr-defined]
    return lp_dist
