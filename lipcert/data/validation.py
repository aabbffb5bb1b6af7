"""A validation split carved from a training split, for tuning without looking at the test split.

``validation_split(y, fraction, seed)`` puts ``round-half-up(fraction * n_c)`` samples of every
class ``c`` into the validation part, chosen by the same frozen legacy-``RandomState`` rule as the
embedded datasets' train/test splits (:func:`embedded.stratified_split`); the rest stays for
training. Both index arrays are ascending, so the split depends only on (labels, fraction, seed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .embedded import stratified_split
from .errors import DataError


def validation_split(y: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)`` (int64, ascending) into labels ``y``: a stratified ``fraction`` held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {fraction!r}")
    labels = y.detach().cpu().numpy()
    counts = {int(c): int(np.floor(fraction * n + 0.5)) for c, n in enumerate(np.bincount(labels)) if n}
    if sum(counts.values()) == 0 or sum(counts.values()) == len(labels):
        raise DataError(f"data.val_fraction={fraction} leaves an empty training or validation part of "
                        f"{len(labels)} samples; choose a fraction such as 0.2")
    train_idx, val_idx = stratified_split(labels, counts, seed)
    return torch.from_numpy(train_idx), torch.from_numpy(val_idx)
