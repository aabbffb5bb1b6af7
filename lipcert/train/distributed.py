"""torchrun / DistributedDataParallel support (PyTorch's own engine, nothing home-made).

Under ``torchrun --nproc-per-node N -m lipcert train ...`` every process runs the same Trainer:

* the process group uses nccl on GPUs and gloo on CPUs (``init_distributed``);
* every rank draws the same epoch permutation and augmentation parameters (seeded by (seed,
  epoch)) and takes its contiguous slice of each *global* batch (``shard``), so the global batch
  size and the data seen per step are those of one process;
* gradients are averaged by DDP; mean-shift batch means are averaged across ranks inside
  ``MeanShiftNorm`` (as SyncBatchNorm does), so N processes compute what one process computes;
* evaluation splits the test set into contiguous shards and gathers the per-sample results;
* only rank 0 writes logs, progress, checkpoints and results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group torchrun set up (no-op for a single process).

    nccl for CUDA devices, gloo otherwise; each process uses GPU ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return DistEnv()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on GPUs."""
    if env.enabled and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device


def shard(indices: Tensor, env: DistEnv) -> Tensor:
    """This rank's contiguous slice of a global batch (the batch size must divide evenly)."""
    if not env.enabled:
        return indices
    n = indices.numel()
    if n % env.world_size:
        raise ValueError(f"global batch of {n} samples does not split evenly over {env.world_size} processes; "
                         "choose train.batch_size divisible by the number of processes")
    per = n // env.world_size
    return indices[env.rank * per : (env.rank + 1) * per]


def split_range(n: int, env: DistEnv) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of n items (sizes differ by at most one)."""
    base, extra = divmod(n, env.world_size)
    start = env.rank * base + min(env.rank, extra)
    return start, start + base + (1 if env.rank < extra else 0)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` in rank order (a list with ``obj`` alone without distribution)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: list[torch.nn.Parameter], env: DistEnv) -> None:
    """Average gradients of parameters DDP does not manage (e.g. the loss temperature)."""
    if not env.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world_size


def mean_across(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not env.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Leave the process group; every rank first waits for the others (a rank tearing gloo down while
    a partner is still inside a collective aborts the partner: "terminate called without an active
    exception")."""
    if env.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a partner already failed: tear down anyway
            pass
        dist.destroy_process_group()


def evaluate_sharded(model, x: Tensor, y: Tensor, eps_list: list[float], attack: dict | None, batch_size: int, env: DistEnv,
                     cert_kwargs: dict | None = None, progress=None):
    """``certify.evaluate_samples`` on this rank's contiguous shard, gathered in split order
    (``progress`` lines only from the main process)."""
    from ..certify import Evaluation, evaluate_samples

    start, end = split_range(len(y), env)
    progress = progress if env.is_main else None
    part = (evaluate_samples(model, x[start:end], y[start:end], eps_list, attack, batch_size, cert_kwargs, progress)
            if end > start else None)
    parts = [p for p in gather_objects(part, env) if p is not None]
    return Evaluation.cat(parts)
