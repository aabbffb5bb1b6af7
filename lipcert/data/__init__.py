"""Datasets and batched augmentation.

``load(name, split, data_dir=None)`` returns ``(x, y)``: x float32 (N, C, H, W) raw in [0, 1],
y int64 (N,). Embedded datasets (``digits``, ``mnist5k``, ``synthetic``) need nothing; ``mnist``,
``fashion-mnist``, ``cifar10``, ``cifar100`` and ``tinyimagenet`` are read from local files in the
layouts they are distributed in (``info(name).layout``). Your own data: ``imagefolder`` and
``arrays`` (npz / pt / safetensors), see :mod:`lipcert.data.custom`. Nothing is ever downloaded.
``validation_split`` carves a stratified validation part from a training split (for tuning).
:class:`Augmenter` does random crop + flip (+ affine; EMAReport's MAUG / SAUG colour jitter, grayscale
and random resized crop: ``augment_strength``) on the device with separately sampled parameters.
"""

from .augment import AugParams, Augmenter, augment, augment_strength
from .errors import DataError, DataWarning
from .custom import KINDS as CUSTOM_KINDS
from .registry import DatasetInfo, available, canonical_name, channel_stats, clear_cache, config_options, custom_info, info, load
from .split import holdout_split
from .validation import validation_split

__all__ = [
    "AugParams",
    "CUSTOM_KINDS",
    "Augmenter",
    "DataError",
    "DataWarning",
    "DatasetInfo",
    "augment",
    "augment_strength",
    "available",
    "canonical_name",
    "channel_stats",
    "clear_cache",
    "config_options",
    "custom_info",
    "holdout_split",
    "info",
    "load",
    "validation_split",
]
