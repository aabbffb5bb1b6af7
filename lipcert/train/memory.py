"""Memory a training configuration needs: per-sample power-iteration vectors, data, weights, activations.

The local-bound objective (Huang21 Algorithm 1, :class:`~lipcert.train.objectives_l2.LipschitzObjective`)
keeps one vector per training sample for every layer it bounds locally, the smaller side of each
layer (:func:`lipcert.bounds.lipschitz.local_vector_numel`), in ``store_dtype``. That is exact
(the store is sized for the whole training set at its first step). The rest is an estimate:

* training set on the device: the loop keeps it there in float32;
* parameters: weights, gradients and two Adam moments, float32;
* activations of one step: ``ACTIVATION_COPIES`` float32 copies of every pre-activation per sample
  (the forward pass, the box / ball propagation and the local power iteration keep several per
  layer for the backward pass). Measured on CPU for the TinyImageNet presets' 8C2F with
  ``local_layers`` (one step, batch 2 / 6 / 14, docs/presets.md): bytes saved for backward 10.5
  (ReLU-theta) and 12.5 (clipped MaxMin) copies, peak resident memory 14.6 and 19.1 copies per
  sample; 24 leaves room for the CUDA allocator's caching.

Under torch.distributed every process keeps every sample's vectors (they are all-gathered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import data
from ..bounds import LipschitzChain, local_vector_numel
from ..config import Config
from .objectives import build_objective

#: float32 copies of every pre-activation held per sample during one step (estimate; module docstring)
ACTIVATION_COPIES = 24
GB = 1e9


def vector_bytes_per_sample(model: nn.Module, objective: dict) -> int:
    """Bytes of per-sample power-iteration vectors the ``objective`` spec (a preset's ``objective``
    section) stores for one training sample of ``model``: ``sum over bounded layers of
    min(in_numel, out_numel) x element size``; 0 without the local bound or ``keep_vectors``."""
    obj = build_objective(objective)
    if getattr(obj, "bound", None) != "local" or not getattr(obj, "keep_vectors", False):
        return 0
    ops = LipschitzChain.from_model(model).ops()
    size = torch.empty((), dtype=obj.store_dtype).element_size()
    return size * sum(local_vector_numel(ops, obj.local_layers).values())


def activation_bytes_per_sample(model: nn.Module) -> int:
    """Estimated bytes of one training step's activations per sample: ``ACTIVATION_COPIES`` float32
    copies of every layer's pre-activation."""
    ops = LipschitzChain.from_model(model).ops()
    return ACTIVATION_COPIES * 4 * sum(op.out_numel for op in ops)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a configuration needs (see the module docstring for what is exact and what estimated)."""

    samples: int
    batch_size: int
    vector_per_sample: int
    vectors: int  # exact: samples x vector_per_sample
    vectors_on_device: bool  # store_device unset or not "cpu": on the training device
    train_set: int  # the training images, float32, on the device
    params: int  # weights + gradients + two Adam moments, float32
    activations: int  # one step at batch_size (estimate)

    @property
    def device(self) -> int:
        """Bytes on the training device (GPU)."""
        return self.train_set + self.params + self.activations + (self.vectors if self.vectors_on_device else 0)

    @property
    def host(self) -> int:
        """Bytes of vectors kept in host memory (``store_device: cpu``)."""
        return 0 if self.vectors_on_device else self.vectors

    def summary(self) -> str:
        where = "device" if self.vectors_on_device else "host"
        return (f"vectors {self.samples} x {self.vector_per_sample} B = {self.vectors / GB:.2f} GB ({where}), "
                f"training set {self.train_set / GB:.2f} GB, parameters + Adam {self.params / GB:.2f} GB, "
                f"activations at batch {self.batch_size} {self.activations / GB:.2f} GB; device total {self.device / GB:.2f} GB")


def estimate_memory(cfg: Config, model: nn.Module | None = None) -> MemoryEstimate:
    """:class:`MemoryEstimate` of training ``cfg`` (a loaded preset) on its dataset's training split
    (all of it: an upper bound when ``train_fraction`` / ``val_fraction`` keep less). ``model``: the
    built model, when the caller has it (default: built on the CPU from ``cfg``)."""
    from .loop import build_model

    info = data.info(cfg.data.name)
    model = model if model is not None else build_model(cfg, info)
    n = info.train_size
    per = vector_bytes_per_sample(model, cfg.objective)
    store_device = cfg.objective.get("store_device")
    on_device = store_device is None or torch.device(store_device).type != "cpu"
    in_numel = 1
    for s in info.in_shape:
        in_numel *= int(s)
    params = sum(p.numel() for p in model.parameters())
    batch = int(cfg.train.batch_size)
    return MemoryEstimate(
        samples=n,
        batch_size=batch,
        vector_per_sample=per,
        vectors=n * per,
        vectors_on_device=on_device,
        train_set=n * in_numel * 4,
        params=params * 4 * 4,
        activations=batch * activation_bytes_per_sample(model),
    )


__all__ = ["ACTIVATION_COPIES", "MemoryEstimate", "activation_bytes_per_sample", "estimate_memory", "vector_bytes_per_sample"]
