"""Global and local l2 Lipschitz bounds of a chain (Huang21 Eq. 2 and Eq. 6).

Estimates (power iteration, lower bounds of each factor -- training, and the paper's numbers):

* :func:`global_sigmas` -- ``||W^l||`` of every layer on its real input shape, with one persistent
  vector per layer (a :class:`~lipcert.bounds.power.VectorStore` keyed by layer, index 0).
* :func:`local_sigmas` -- ``||I^l W^l I^(l-1)||`` per sample (Huang21 Algorithm 1), vectors kept per
  dataset index between epochs; with ``tol`` the paper's evaluation rule (stop when
  ``||u_(t+1) - u_t|| <= tol``); with ``layers`` only for the listed layers (the Huang21 code's
  TinyImageNet memory scheme, ``--indices``). :func:`local_vector_numel` is what the store keeps
  per sample; :func:`reserve_local_vectors` sizes a store for a whole dataset at once.

Provable upper bounds (certificates):

* :func:`global_upper` -- per-layer bounds from :mod:`lipcert.bounds.norms` (dense: float64 SVD;
  conv: polyphase circulant bound).
* :func:`local_upper` -- per-sample: exact reduced norms of dense layers (float64 Gram
  eigenvalues + slack); for conv layers the global conv bound (a reduced matrix is a submatrix,
  Huang21 Prop. 1). No cheap rigorous bound of a *masked* convolution is known to us, so the local
  benefit of conv layers is only available as an estimate (``local_sigmas``).

The network bound is the product of its layers' bounds: :func:`product_upper` rounds it up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .chain import LipschitzChain
from ..numerics import U64, round_up
from .norms import reduced_dense_norm_upper
from .operators import DenseOp
from .power import VectorStore, power_iteration


def _side(op) -> str:
    """Which singular vector to keep: the smaller one (memory)."""
    return "in" if op.in_numel <= op.out_numel else "out"


def check_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    """``layers`` (0-based chain layers, as :func:`local_sigmas` numbers them) as a sorted list,
    every layer when None; raises ValueError for an index outside ``[0, depth)`` or a repeat."""
    if layers is None:
        return list(range(depth))
    out = sorted(int(l) for l in layers)
    if len(set(out)) != len(out):
        raise ValueError(f"local layers repeat an index: {list(layers)}")
    bad = [l for l in out if not 0 <= l < depth]
    if bad:
        raise ValueError(f"local layers {bad} outside the chain's layers 0..{depth - 1}")
    return out


def local_vector_shapes(ops: Sequence, layers: Sequence[int] | None = None) -> dict[int, tuple[int, ...]]:
    """Shape of the per-sample vector :func:`local_sigmas` stores for each listed layer (the smaller
    side: the input shape when ``in_numel <= out_numel``, else the output shape), by layer; ``ops``
    are the chain's operators (``chain.ops()``)."""
    return {l: tuple(ops[l].in_shape if _side(ops[l]) == "in" else ops[l].out_shape) for l in check_layers(layers, len(ops))}


def local_vector_numel(ops: Sequence, layers: Sequence[int] | None = None) -> dict[int, int]:
    """Elements per sample that :func:`local_sigmas` stores for each listed layer
    (``min(in_numel, out_numel)``); times the store's element size and the number of samples, the
    store's size."""
    return {l: math.prod(shape) for l, shape in local_vector_shapes(ops, layers).items()}


def reserve_local_vectors(store: VectorStore, ops: Sequence, num_samples: int, layers: Sequence[int] | None = None) -> None:
    """Size ``store`` for ``num_samples`` indices of every listed layer at once (a zero vector at the
    last index: zeros mean "never stored", so the estimates are unchanged), so that it never grows
    in steps by re-allocation (a copy of the old and new buffers at once). Layers already stored
    are left as they are."""
    have = set(store.keys())
    for l, shape in local_vector_shapes(ops, layers).items():
        if f"l{l}" not in have:
            dev = ops[l].weight.device
            store.put(f"l{l}", torch.full((1,), num_samples - 1, dtype=torch.long, device=dev), torch.zeros(1, *shape, device=dev))


def global_sigmas(
    chain: LipschitzChain,
    iters: int = 1,
    store: VectorStore | None = None,
    generator: torch.Generator | None = None,
    tol: float | None = None,
    ops=None,
) -> Tensor:
    """Power-iteration estimates of every layer's spectral norm, shape (L,), differentiable.
    ``ops``: the chain's operators when the caller has built them already (default: ``chain.ops()``)."""
    sig = []
    for l, op in enumerate(ops if ops is not None else chain.ops()):
        key = f"g{l}"
        u0 = None
        if store is not None:
            u0 = store.get(key, torch.zeros(1, dtype=torch.long, device=op.weight.device), op.in_shape, op.weight.device)
        res = power_iteration(op, u=u0, iters=iters, tol=tol, batch=1, generator=generator)
        if store is not None:
            store.put(key, torch.zeros(1, dtype=torch.long), res.u)
        sig.append(res.sigma[0])
    return torch.stack(sig)


def global_upper(chain: LipschitzChain) -> list[float]:
    """Rigorous per-layer upper bounds (float64); see :mod:`lipcert.bounds.norms`."""
    return [op.norm_upper() for op in chain.ops()]


def global_kinds(chain: LipschitzChain) -> list[str]:
    """"exact" (dense SVD) or "upper" (conv bound) for every layer."""
    return [op.norm_kind for op in chain.ops()]


def product_upper(values: Sequence[float]) -> float:
    """Product of non-negative factors, rounded up (each multiplication off by <= 1 ulp)."""
    out = 1.0
    for v in values:
        out = round_up(out * float(v), 2)
    return out


def local_sigmas(
    chain: LipschitzChain,
    masks: list[tuple[Tensor, Tensor]],
    iters: int = 1,
    store: VectorStore | None = None,
    index: Tensor | None = None,
    tol: float | None = None,
    generator: torch.Generator | None = None,
    ops=None,
    layers: Sequence[int] | None = None,
    batch: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample power-iteration estimates of the reduced norms (Huang21 Eq. 6, Algorithm 1).

    Returns ``(sigmas (B, L), iterations (B, L))``. With ``store`` and ``index`` each sample starts
    from the vectors it ended with last time (Huang21 §3.3) and the new ones are stored (key
    ``l<layer>``). With ``layers`` (0-based, sorted) only those layers are estimated and stored: the
    columns are those layers' (B, len(layers)); None = every layer. ``batch``: the number of
    samples, needed only for a chain without activations (no masks).
    """
    red = chain.reduced(masks, ops)
    batch = masks[0][0].shape[0] if masks else batch
    sig, its = [], []
    for l in check_layers(layers, len(red)) if layers is not None else range(len(red)):
        rop = red[l]
        side = _side(rop.op)
        key = f"l{l}"
        u0 = v0 = None
        if store is not None and index is not None:
            shape = rop.in_shape if side == "in" else rop.out_shape
            vec = store.get(key, index, shape, rop.op.weight.device)
            u0, v0 = (vec, None) if side == "in" else (None, vec)
        res = power_iteration(rop, u=u0, v=v0, iters=iters, tol=tol, batch=batch, generator=generator)
        if store is not None and index is not None:
            store.put(key, index, res.u if side == "in" else res.v)
        sig.append(res.sigma)
        its.append(res.iterations)
    return torch.stack(sig, dim=1), torch.stack(its, dim=1)


def local_upper(chain: LipschitzChain, masks: list[tuple[Tensor, Tensor]], layer_upper: Sequence[float] | None = None,
                batch: int | None = None) -> Tensor:
    """Per-sample rigorous upper bounds of every reduced layer norm, (B, L), float64.

    Dense layers: exact norm of the reduced matrix (``reduced_dense_norm_upper``), never more
    than the layer's global bound. Conv layers: the layer's global bound. ``masks`` must come from
    sound bounds (``propagate(..., sound=True)``) for the result to be a certificate. ``batch``: the
    number of samples, needed only for a chain without activations (no masks: the global bounds).
    """
    layer_upper = list(layer_upper) if layer_upper is not None else global_upper(chain)
    red = chain.reduced(masks)
    batch = masks[0][0].shape[0] if masks else batch
    cols = []
    for l, rop in enumerate(red):
        g = torch.full((batch,), layer_upper[l], dtype=torch.float64)
        if isinstance(rop.op, DenseOp):
            im = None if rop.in_mask is None else rop.in_mask.reshape(batch, -1)
            om = None if rop.out_mask is None else rop.out_mask.reshape(batch, -1)
            if im is None and om is None:
                cols.append(g)
                continue
            r = reduced_dense_norm_upper(rop.op.weight, im, om, rel=rop.op.weight_rel_error()).cpu()
            cols.append(torch.minimum(r, g))
        else:
            cols.append(g)
    return torch.stack(cols, dim=1)


def product_rows_upper(sig: Tensor) -> Tensor:
    """Row-wise product of non-negative float64 factors (B, L), rounded up rigorously."""
    sig = sig.to(torch.float64)
    prod = sig.prod(dim=1)
    return prod * (1 + 4 * sig.shape[1] * U64) + 0.0


__all__ = [
    "check_layers",
    "global_kinds",
    "global_sigmas",
    "global_upper",
    "local_sigmas",
    "local_upper",
    "local_vector_numel",
    "local_vector_shapes",
    "product_rows_upper",
    "product_upper",
    "reserve_local_vectors",
]
