"""A fixed random split of a training set into a part to train on and a held-out part.

Fazlyab23's authors train on a random 90 % of the training split (``validationSplit = 0.9``) and
validate on the rest; ``data.train_fraction`` does the same in lipcert. The permutation depends
only on ``n`` and ``seed`` (not on ``train.seed``), so runs with different training seeds hold out
the same samples and hyper-parameters tuned on the held-out part never see the test split.
"""

from __future__ import annotations

import torch
from torch import Tensor


def holdout_split(n: int, train_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(train indices, held-out indices): ``int(n * train_fraction)`` random indices to train on
    (sorted), the rest held out (sorted). ``train_fraction = 1`` holds out nothing."""
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    k = int(n * train_fraction)
    if k < 1:
        raise ValueError(f"train_fraction={train_fraction} keeps no sample of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k].sort().values, perm[k:].sort().values


__all__ = ["holdout_split"]
