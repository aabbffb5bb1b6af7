"""Your own data: an image folder or arrays in a file, split, checked and described by a :class:`DatasetInfo`.

Two kinds (``data.name`` = kind, ``data.data_dir`` = path; or ``name: "KIND:PATH"``):

* ``imagefolder`` -- ``root/<class>/*.png|jpg|jpeg|bmp``. With a ``root/train/<class>/`` and
  ``root/test/<class>/`` level those are the splits; otherwise a seeded stratified fraction
  (``test_fraction`` of every class, seed ``split_seed``) is held out as the test split. Class names
  are sorted and numbered 0..K-1; the list is stored in the run's config (``data.classes``) so a
  checkpoint is certified with the same numbering. Pixels are uint8 / 255. Every image must have
  the same size, and all must be grayscale or all colour: mixed modes are refused naming one file
  of each (convert them first; lipcert does not guess which you meant). Alpha channels are dropped;
  palette images count as colour. Hidden files (``.DS_Store``) are skipped; any other file that is
  not a readable image is an error naming it.
* ``arrays`` -- a ``.npz`` file, a ``.pt`` file (a dict of tensors, read with
  ``torch.load(weights_only=True)``) or a ``.safetensors`` file with ``x`` and ``y`` (and optionally
  ``x_test`` / ``y_test``; otherwise the seeded fraction split). ``x`` is (N, C, H, W), (N, H, W)
  (one channel) or (N, D) (vectors, stored as (N, 1, 1, D): MLP recipes only); uint8 is divided by
  255, float values must already lie in [0, 1]. ``y`` holds integer class indices 0..K-1 with K
  the number of classes in the training split (or ``len(classes)`` when a ``classes`` list is given).

Normalisation constants come from the training split: per-channel pixel mean and std (population),
which the model's first layer (``InputNormalize``) stores, so checkpoints keep raw [0, 1] units.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

KINDS = ("imagefolder", "arrays")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")
DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class CustomData:
    """A loaded custom dataset: float32 [0, 1] splits, class names, training-split statistics."""

    kind: str
    path: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_rule: str


def is_custom(name: object) -> bool:
    """Whether a dataset name names your own data (``imagefolder``, ``arrays:PATH``, ...)."""
    return str(name).strip().partition(":")[0].strip().lower() in KINDS


def split_spec(name: str, data_dir: str | os.PathLike | None) -> tuple[str, str] | None:
    """``(kind, path)`` when ``name`` is a custom kind (``"imagefolder"`` with ``data_dir``, or
    ``"imagefolder:PATH"``), else None."""
    text = str(name).strip()
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        return None
    if sep:
        if data_dir not in (None, "") and Path(data_dir).expanduser().resolve() != Path(path).expanduser().resolve():
            raise DataError(f"dataset {name!r} names its path, but data_dir={data_dir!r} names another; give one")
    else:
        path = "" if data_dir is None else str(data_dir)
    if not path:
        raise DataError(f"dataset kind {kind!r} needs a path: --data {kind}:PATH (YAML: data: {{name: {kind}, "
                        f"data_dir: PATH}})")
    return kind, str(Path(path).expanduser().resolve())


def load_custom(kind: str, path: str, classes: Sequence[str] | None = None, test_fraction: float | None = None,
                split_seed: int = 0) -> CustomData:
    """The dataset at ``path`` (see module docstring); cached per (path, modification time, options)."""
    p = Path(path)
    if not p.exists():
        what = "folder" if kind == "imagefolder" else "file"
        raise DataError(f"{kind} data: {what} {p} does not exist")
    frac = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
    if not 0.0 < frac < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {frac}")
    key = (kind, str(p), tuple(classes) if classes is not None else None, frac, int(split_seed), _stamp(p))
    return _load_cached(*key)


def _stamp(p: Path) -> float:
    if p.is_file():
        return p.stat().st_mtime_ns
    return max([p.stat().st_mtime_ns] + [d.stat().st_mtime_ns for d in p.rglob("*")])


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, path: str, classes: tuple[str, ...] | None, frac: float, seed: int, _stamp: float) -> CustomData:
    if kind == "imagefolder":
        xtr, ytr, xte, yte, names, rule = _imagefolder(Path(path), classes, frac, seed)
    else:
        xtr, ytr, xte, yte, names, rule = _arrays(Path(path), classes, frac, seed)
    n_cls = len(names)
    if n_cls < 2:
        raise DataError(f"{path}: only one class ({names[0] if names else 'none'}); certified classification needs at "
                        "least two classes")
    counts = torch.bincount(ytr, minlength=n_cls)
    missing = [names[i] for i in range(n_cls) if counts[i] == 0]
    if missing:
        raise DataError(f"{path}: class(es) {missing} have no training samples; remove them from the class list or "
                        "add samples")
    mean, std = _stats(xtr)
    return CustomData(kind, path, xtr, ytr, xte, yte, tuple(names), mean, std, rule)


def _stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xd = x.to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
    mean = xd.mean(1).tolist()
    # a constant channel has std 0: normalise it by 1 instead (dividing by ~0 would make the
    # model's Lipschitz constant, and so every certificate, useless)
    std = [s if s > 1e-3 else 1.0 for s in xd.std(1, correction=0).tolist()]
    return tuple(mean), tuple(std)


# ------------------------------------------------------------------------------- splits
def _fraction_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: round(frac * n_c) samples of every class (at least 1 when it has 2+) go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(frac * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------------- image folder
def _list_class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _class_files(d: Path) -> list[Path]:
    files = []
    for f in sorted(d.iterdir(), key=lambda f: f.name):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            raise DataError(f"{f} is a folder inside class folder {d}; an image folder is root/<class>/<image> "
                            "(or root/train/<class>/<image> and root/test/<class>/<image>)")
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{f} is not an image file lipcert reads ({', '.join(IMAGE_SUFFIXES)}); remove it or move "
                            "it out of the data folder")
        files.append(f)
    if not files:
        raise DataError(f"class folder {d} is empty; remove it or add images")
    return files


def _read_image(f: Path) -> np.ndarray:
    """(C, H, W) uint8, C = 1 (grayscale) or 3 (colour; alpha dropped, palettes expanded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "L", "LA"):
                arr = np.asarray(im.convert("L"))[None]
            elif mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
            else:
                raise DataError(f"{f}: image mode {mode!r} is not supported (8-bit grayscale or colour only); convert "
                                "it, e.g. to 8-bit PNG")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{f} is not a readable image ({type(err).__name__}: {err}); remove or replace it") from None
    return np.ascontiguousarray(arr)


def _read_images(files: list[Path], first: dict[str, object]) -> np.ndarray:
    """Stack images, refusing mixed sizes / modes; ``first`` remembers the reference file across splits."""
    out = []
    for f in files:
        a = _read_image(f)
        if "file" not in first:
            first.update(file=f, shape=a.shape)
        ref, shape = first["file"], first["shape"]
        if a.shape[0] != shape[0]:  # type: ignore[index]
            modes = {1: "grayscale", 3: "colour"}
            raise DataError(f"mixed image modes: {ref} is {modes[shape[0]]} but {f} is {modes[a.shape[0]]}; convert "  # type: ignore[index]
                            "all images to one mode (all grayscale or all RGB) first")
        if a.shape[1:] != shape[1:]:  # type: ignore[index]
            raise DataError(f"mixed image sizes: {ref} is {shape[2]}x{shape[1]} (width x height) but {f} is "  # type: ignore[index]
                            f"{a.shape[2]}x{a.shape[1]}; resize all images to one size first")
        out.append(a)
    return np.stack(out)


def _imagefolder(root: Path, classes: tuple[str, ...] | None, frac: float, seed: int):
    if not root.is_dir():
        raise DataError(f"imagefolder data: {root} is a file, not a folder (expected root/<class>/*.png)")
    first: dict[str, object] = {}
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            have = "train" if (root / "train").is_dir() else "test"
            raise DataError(f"{root} has a {have}/ folder but no {'test' if have == 'train' else 'train'}/ folder; "
                            "give both root/train/<class>/ and root/test/<class>/, or neither (a seeded fraction split)")
        tr_dirs = _list_class_dirs(root / "train")
        names = list(classes) if classes is not None else [d.name for d in tr_dirs]
        xtr, ytr = _read_split(root / "train", names, first, require_all=classes is None)
        xte, yte = _read_split(root / "test", names, first, require_all=False)
        rule = "train/ and test/ folders"
    else:
        dirs = _list_class_dirs(root)
        if not dirs:
            raise DataError(f"{root} has no class folders; expected root/<class>/*.png (one folder per class)")
        names = list(classes) if classes is not None else [d.name for d in dirs]
        x, y = _read_split(root, names, first, require_all=classes is None)
        tr, te = _fraction_split(y, frac, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        rule = f"stratified {frac:g} test fraction, seed {seed}"
    to = lambda a: torch.from_numpy(a).to(torch.float32).div_(255.0)  # noqa: E731
    return to(xtr), torch.from_numpy(ytr), to(xte), torch.from_numpy(yte), names, rule


def _read_split(folder: Path, names: list[str], first: dict[str, object], require_all: bool):
    dirs = _list_class_dirs(folder)
    if not dirs:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class>/*.png")
    index = {n: i for i, n in enumerate(names)}
    unknown = [d.name for d in dirs if d.name not in index]
    if unknown:
        raise DataError(f"{folder}: class folder(s) {unknown} are not among the model's classes {names}")
    xs, ys = [], []
    for d in dirs:
        files = _class_files(d)
        xs.append(_read_images(files, first))
        ys.append(np.full(len(files), index[d.name], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


# --------------------------------------------------------------------------------- arrays
def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as err:
            raise DataError(f"{path} is not a readable .npz file of plain arrays: {err}") from None
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure of the weights-only unpickler means "not tensors"
            raise DataError(f"{path} is not a file of tensors torch.load(weights_only=True) reads: "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} holds a {type(obj).__name__}; save a dict: torch.save({{'x': x, 'y': y}}, path)")
        return {k: (v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in obj.items()}
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable safetensors file: {err}") from None
    raise DataError(f"{path}: unknown array file type {suffix!r}; use {', '.join(ARRAY_SUFFIXES)}")


def _as_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        out = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32)
        if out.size and not np.isfinite(out).all():
            raise DataError(f"{path}: {key} contains NaN or inf")
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            hint = " (looks like 0..255: divide by 255 or store uint8)" if hi > 1.0 and hi <= 255.0 and lo >= 0 else ""
            raise DataError(f"{path}: {key} values lie in [{lo:g}, {hi:g}], but float inputs must be in [0, 1]{hint}; "
                            "radii are in these units")
    else:
        raise DataError(f"{path}: {key} has dtype {x.dtype}; store uint8 pixels (0..255) or floats in [0, 1]")
    if out.ndim == 2:
        out = out[:, None, None, :]
    elif out.ndim == 3:
        out = out[:, None]
    elif out.ndim != 4:
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, C, H, W), (N, H, W) or (N, D)")
    elif out.shape[3] in (1, 3) and out.shape[1] not in (1, 3):
        raise DataError(f"{path}: {key} has shape {x.shape}, which looks channels-last (N, H, W, C); lipcert reads "
                        "(N, C, H, W): store x.transpose(0, 3, 1, 2)")
    return np.ascontiguousarray(out)


def _as_labels(y: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        bad = ""
        if np.issubdtype(y.dtype, np.floating) and y.size:
            frac = np.flatnonzero(y != np.round(y))
            bad = f" (e.g. {float(y.flat[frac[0]]):g} at index {frac[0]})" if frac.size else \
                " (whole numbers: store them as integers, y.astype(np.int64))"
        raise DataError(f"{path}: {key} must hold integer class indices, got dtype {y.dtype}{bad}")
    y = y.reshape(-1).astype(np.int64)
    if y.shape[0] != n:
        raise DataError(f"{path}: {key} has {y.shape[0]} labels but the inputs have {n} samples")
    if y.size and int(y.min()) < 0:
        i = int(np.argmin(y))
        raise DataError(f"{path}: {key}[{i}] = {int(y[i])}; class indices must be >= 0")
    return y


def _arrays(path: Path, classes: tuple[str, ...] | None, frac: float, seed: int):
    if path.is_dir():
        raise DataError(f"arrays data: {path} is a folder; give the .npz / .pt / .safetensors file")
    arrs = _read_arrays(path)
    for k in ("x", "y"):
        if k not in arrs:
            raise DataError(f"{path} has no {k!r} array (found: {sorted(arrs) or 'nothing'}); it needs x (inputs) and y "
                            "(integer labels), optionally x_test and y_test")
    has_test = "x_test" in arrs or "y_test" in arrs
    if has_test and not ("x_test" in arrs and "y_test" in arrs):
        raise DataError(f"{path} has only one of x_test / y_test; give both or neither (a seeded fraction split)")
    x = _as_images(arrs["x"], "x", path)
    y = _as_labels(arrs["y"], "y", x.shape[0], path)
    if has_test:
        xte = _as_images(arrs["x_test"], "x_test", path)
        yte = _as_labels(arrs["y_test"], "y_test", xte.shape[0], path)
        if xte.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test samples have shape {xte.shape[1:]} but x samples {x.shape[1:]}")
        xtr, ytr, rule = x, y, "x/y and x_test/y_test"
    else:
        tr, te = _fraction_split(y, frac, seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        rule = f"stratified {frac:g} test fraction, seed {seed}"
    if classes is not None:
        names = list(classes)
    elif "classes" in arrs:
        names = [str(c) for c in np.asarray(arrs["classes"]).reshape(-1).tolist()]
    else:
        names = [str(i) for i in range(int(ytr.max()) + 1 if ytr.size else 0)]
    for key, lab in (("y", ytr), ("y_test", yte)):
        if lab.size and int(lab.max()) >= len(names):
            i = int(np.argmax(lab))
            raise DataError(f"{path}: {key} holds label {int(lab[i])} (at index {i} of its split), outside the "
                            f"{len(names)} classes 0..{len(names) - 1} of the training data")
    if xtr.shape[0] == 0:
        raise DataError(f"{path}: no training samples")
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte), names, rule


def describe(d: CustomData) -> str:
    shape = "x".join(map(str, d.x_train.shape[1:]))
    return (f"{d.kind} {d.path}: {len(d.classes)} classes, inputs {shape}, {d.x_train.shape[0]} train / "
            f"{d.x_test.shape[0]} test ({d.split_rule})")


__all__ = ["CustomData", "DEFAULT_TEST_FRACTION", "KINDS", "describe", "is_custom", "load_custom", "split_spec"]
