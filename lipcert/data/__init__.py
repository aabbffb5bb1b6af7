"""Datasets and batched augmentation.

``load(name, split, data_dir=None)`` returns ``(x, y)``: x float32 (N, C, H, W) raw in [0, 1],
y int64 (N,). Embedded datasets (``digits``, ``mnist5k``, ``synthetic``) need nothing; ``mnist``,
``fashion-mnist``, ``cifar10``, ``cifar100`` and ``tinyimagenet`` are read from local files in the
layouts they are distributed in (``info(name).layout``). Nothing is ever downloaded.
``validation_split`` carves a stratified validation part from a training split (for tuning).
:class:`Augmenter` does random crop + flip on the device with separately sampled parameters.
"""

from .augment import AugParams, Augmenter, augment
from .errors import DataError, DataWarning
from .registry import DatasetInfo, available, canonical_name, channel_stats, clear_cache, info, load
from .validation import validation_split

__all__ = [
    "AugParams",
    "Augmenter",
    "DataError",
    "DataWarning",
    "DatasetInfo",
    "augment",
    "available",
    "canonical_name",
    "channel_stats",
    "clear_cache",
    "info",
    "load",
    "validation_split",
]
