"""Power iteration: batched, per-sample, with persistent vectors (Huang21 Algorithm 1).

:func:`power_iteration` runs on any operator with ``forward`` / ``adjoint`` and ``in_shape`` /
``out_shape`` (a layer, a masked reduced layer, a composition of layers) for a whole batch at
once, each sample with its own vector (and masks). It returns ``sigma = ||A u||`` with ``u``
detached, which is differentiable with respect to the weights inside ``A`` (the usual spectral
normalisation gradient) and is a *lower* bound of ``||A||_2``: an **estimate**, never a
certificate (see :mod:`lipcert.bounds.norms` for upper bounds).

:class:`VectorStore` is the one store of persistent power-iteration vectors: by key and integer
index (a dataset sample, or 0 for a global bound; Huang21's per-sample vectors, in low precision,
growing as new indices arrive) or by key alone (one block of vectors per key, kept as given:
LipLT's span vectors, :func:`lipcert.bounds.span_norms.span_vectors`). It is an ``nn.Module``
whose buffers go into the owner's ``state_dict`` (``vec_<key>`` / ``u_<s>_<e>``, as every
checkpoint has stored them) and load back into a fresh store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .operators import reference_tensor

_TINY = 1e-30


@dataclass
class PowerResult:
    sigma: Tensor  # (B,) estimate of the largest singular value (differentiable w.r.t. weights)
    u: Tensor  # (B, *in_shape) unit right singular vector estimate (detached)
    v: Tensor  # (B, *out_shape) unit left singular vector estimate (detached)
    iterations: Tensor  # (B,) iterations run for each sample


def _norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def _normalize(x: Tensor) -> Tensor:
    return x / _norm(x).clamp_min(_TINY)


def _mask_in(op, x: Tensor) -> Tensor:  # noqa: D103
    return op.mask_input(x) if hasattr(op, "mask_input") else x


def _start(op, u: Tensor | None, v: Tensor | None, batch: int | None, dtype, device, generator) -> Tensor:
    """A unit starting vector per sample: given u, or A^T v, re-drawn at random where it vanishes."""
    if u is None and v is not None:
        u = op.adjoint(v.to(dtype))
    if u is None:
        if batch is None:
            raise ValueError("power_iteration needs u, v or batch")
        u = torch.zeros(batch, *op.in_shape, dtype=dtype, device=device)
    u = _mask_in(op, u.to(dtype))
    dead = _norm(u).flatten() <= 1e-20
    if bool(dead.any()):
        rnd = torch.randn((int(dead.sum()), *op.in_shape), generator=generator, dtype=dtype, device=device)
        if hasattr(op, "select"):
            rnd = _mask_in(op.select(dead.nonzero().flatten()), rnd)
        u = u.clone()
        u[dead] = rnd
    return _normalize(u)


def power_iteration(
    op,
    u: Tensor | None = None,
    v: Tensor | None = None,
    iters: int = 1,
    tol: float | None = None,
    batch: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> PowerResult:
    """Estimate ``||A||_2`` for every sample of a batched operator ``A = op``.

    Start from ``u`` (B, *in_shape) or ``v`` (B, *out_shape) (e.g. last epoch's vectors; a
    vanishing start is replaced by a random one) and run ``iters`` steps ``v <- A u / ||A u||``,
    ``u <- A^T v / ||A^T v||`` (Huang21 Algorithm 1). With ``tol`` the loop runs up to ``iters`` steps
    and stops for each sample once ``||u_(t+1) - u_t|| <= tol`` (Huang21 §4: tol 1e-3). ``sigma =
    ||A u||`` carries gradients to the weights inside ``op`` (u itself is detached).
    """
    w = reference_tensor(op)
    dtype = dtype or (w.dtype if w is not None else torch.get_default_dtype())
    device = w.device if w is not None else (u.device if u is not None else v.device)
    with torch.no_grad():
        u = _start(op, None if u is None else u.detach(), None if v is None else v.detach(), batch, dtype, device, generator)
        n = u.shape[0]
        count = torch.zeros(n, dtype=torch.long, device=device)
        if tol is None:
            for _ in range(iters):
                vv = _normalize(op.forward(u))
                u = _normalize(op.adjoint(vv))
            count += iters
        else:
            active = torch.arange(n, device=device)
            for _ in range(iters):
                sub = op.select(active) if hasattr(op, "select") and active.numel() < n else op
                ua = u[active]
                vv = _normalize(sub.forward(ua))
                un = _normalize(sub.adjoint(vv))
                u[active] = un
                count[active] += 1
                moved = _norm(un - ua).flatten()
                active = active[moved > tol]
                if active.numel() == 0:
                    break
    au = op.forward(u)
    sigma = au.flatten(1).norm(dim=1)
    return PowerResult(sigma=sigma, u=u, v=_normalize(au.detach()), iterations=count)


def _gather_cat(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors from all ranks, in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


class VectorStore(nn.Module):
    """Power-iteration vectors by key (layer, span) and, for per-sample use, integer index.

    Indexed: ``get(key, index, shape)`` returns float32 vectors (zeros for indices never stored,
    which :func:`power_iteration` replaces by random starts); ``put`` stores them as ``dtype`` on
    ``device`` (None: the device of the first vectors stored). Buffers grow to the largest index
    seen. Memory: ``N * sum(numel) * 2`` bytes in float16 (the owner chooses which side of each
    layer to keep; lipcert keeps the smaller one).
    By key alone: ``get_block(key)`` returns what ``put_block(key, t)`` stored (a detached copy,
    in ``dtype`` unless that is None), or None.
    Buffers are named ``prefix + key`` and are part of ``state_dict()``; :meth:`load_state_dict`
    accepts any stored sizes.
    """

    def __init__(self, dtype: torch.dtype | None = torch.float16, device: str | torch.device | None = None,
                 prefix: str = "vec_") -> None:
        super().__init__()
        self.store_dtype = dtype
        self.store_device = None if device is None else torch.device(device)
        self.prefix = prefix

    def get_block(self, key: str) -> Tensor | None:
        return self._buf(key)

    @torch.no_grad()
    def put_block(self, key: str, vectors: Tensor) -> None:
        self._buffers[self.prefix + key] = vectors.detach().to(device=self.store_device or vectors.device,
                                                               dtype=self.store_dtype or vectors.dtype, copy=True)

    def _buf(self, key: str) -> Tensor | None:
        return self._buffers.get(self.prefix + key)

    def get(self, key: str, index: Tensor, shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
        device = device or index.device
        buf = self._buf(key)
        out = torch.zeros(index.numel(), *shape, dtype=torch.float32, device=device)
        if buf is None or tuple(buf.shape[1:]) != tuple(shape):
            return out
        idx = index.to(buf.device).long()
        ok = idx < buf.shape[0]
        if bool(ok.any()):
            out[ok.to(device)] = buf[idx[ok]].to(device=device, dtype=torch.float32)
        return out

    @torch.no_grad()
    def put(self, key: str, index: Tensor, vectors: Tensor) -> None:
        """Store ``vectors`` under ``index``. Under torch.distributed every rank stores every rank's
        vectors (all-gathered), so the per-sample state stays identical on all processes."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            index, vectors = _gather_cat(index), _gather_cat(vectors.detach().contiguous())
        shape = tuple(vectors.shape[1:])
        buf = self._buf(key)
        dev = self.store_device or (buf.device if buf is not None else vectors.device)
        need = int(index.max()) + 1 if index.numel() else 0
        if buf is None or tuple(buf.shape[1:]) != shape:
            buf = torch.zeros(need, *shape, dtype=self.store_dtype or vectors.dtype, device=dev)
        elif buf.shape[0] < need:
            grown = torch.zeros(max(need, int(buf.shape[0] * 1.25) + 1), *shape, dtype=self.store_dtype or buf.dtype, device=dev)
            grown[: buf.shape[0]] = buf
            buf = grown
        buf[index.to(buf.device).long()] = vectors.detach().to(device=buf.device, dtype=buf.dtype)
        self._buffers[self.prefix + key] = buf

    def keys(self) -> list[str]:
        return [k[len(self.prefix) :] for k in self._buffers if k.startswith(self.prefix)]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values() if b is not None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for full, value in state_dict.items():
            if full.startswith(prefix + self.prefix) and "." not in full[len(prefix) :]:
                name = full[len(prefix) :]
                dev = self.store_device or value.device
                self._buffers[name] = torch.empty_like(value, device=dev)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


__all__ = ["PowerResult", "VectorStore", "power_iteration"]
