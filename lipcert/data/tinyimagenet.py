"""TinyImageNet (the Stanford CS231n tiny-imagenet-200 release) from its standard folder layout.

Layout (as ``tiny-imagenet-200.zip`` unpacks), under DIR/tiny-imagenet-200/ or DIR itself::

    wnids.txt                          the 200 class ids (WordNet ids), one per line
    train/<wnid>/images/*.JPEG         500 training images per class
    val/images/*.JPEG                  10,000 validation images
    val/val_annotations.txt            "<file>\\t<wnid>\\t<box>" per validation image

The "test" split is the official *val* split: the official test labels were never published, so
the val images are what papers (e.g. Huang21, Table 2) report test accuracy on. A val folder already
re-sorted into ``val/<wnid>/images/*.JPEG`` or ``val/<wnid>/*.JPEG`` is accepted too.

Labels are indices into ``sorted(wnids)``, the order torchvision's ImageFolder uses on ``train/``.
Images are 64x64; greyscale ones are converted to RGB. Samples are ordered by label, then by
file name in natural order (``val_2`` before ``val_10``).

Decoding 110,000 JPEGs takes a while, so the decoded uint8 arrays are cached as ``.npy`` files in
the *user cache*, not next to the data (shared dataset folders are often read-only):
``$LIPCERT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lipcert``, else ``~/.cache/lipcert``. The cache key
hashes the resolved data folder and every image's name, size and modification time, so changed
data is re-decoded; writes are atomic (rename), so concurrent ranks cannot see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import DataError, DataWarning

FOLDER = "tiny-imagenet-200"
SIZE = 64
NUM_CLASSES = 200
_CACHE_FORMAT = 1
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}

LAYOUT = ("DIR/tiny-imagenet-200/ (as tiny-imagenet-200.zip unpacks; or DIR itself) holding wnids.txt, "
          "train/<wnid>/images/*.JPEG and val/images/*.JPEG with val/val_annotations.txt")


def cache_dir() -> Path:
    """Where decoded arrays are cached: $LIPCERT_CACHE_DIR, $XDG_CACHE_HOME/lipcert or ~/.cache/lipcert."""
    if os.environ.get("LIPCERT_CACHE_DIR"):
        return Path(os.environ["LIPCERT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lipcert"


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _images_in(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: _natural_key(p.name))


def find_root(root: Path) -> Path:
    """The tiny-imagenet-200 folder under ``root`` (or ``root`` itself); DataError with the layout if absent."""
    for d in (root / FOLDER, root):
        if (d / "wnids.txt").is_file():
            return d
    raise DataError(f"tinyimagenet not found: no wnids.txt in {root / FOLDER} or {root}.\n"
                    f"Expected layout: {LAYOUT}.\nFix: pass --data-dir DIR (Python: data_dir=DIR) where "
                    "tiny-imagenet-200.zip was extracted; lipcert never downloads data.")


def read_wnids(root: Path) -> list[str]:
    """Class ids in label order (sorted, as ImageFolder orders them)."""
    path = root / "wnids.txt"
    wnids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise DataError(f"{path}: expected distinct class ids, one per line; got {len(wnids)} lines "
                        f"with {len(set(wnids))} distinct ids")
    if len(wnids) > NUM_CLASSES:
        raise DataError(f"{path}: {len(wnids)} classes, TinyImageNet has {NUM_CLASSES}")
    if len(wnids) != NUM_CLASSES:
        warnings.warn(f"{path}: {len(wnids)} classes, the official release has {NUM_CLASSES}; "
                      "continuing with what is there", DataWarning, stacklevel=5)
    return sorted(wnids)


def list_files(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """Image paths and int64 labels of ``split`` ("train" or "test" = official val), in a fixed order."""
    wnids = read_wnids(root)
    label_of = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            d = root / "train" / w / "images"
            if not d.is_dir():
                raise DataError(f"tinyimagenet train split: missing folder {d} for class {w} listed in "
                                f"wnids.txt.\nExpected layout: {LAYOUT}.")
            files = _images_in(d)
            if not files:
                raise DataError(f"tinyimagenet train split: no images in {d}.\nExpected layout: {LAYOUT}.")
            paths += files
            labels += [label_of[w]] * len(files)
        return paths, np.asarray(labels, dtype=np.int64)

    val = root / "val"
    ann = val / "val_annotations.txt"
    if ann.is_file():
        entries = []
        for lineno, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) < 2:
                raise DataError(f"{ann}, line {lineno}: expected '<file>\\t<wnid>\\t...', got {line!r}")
            fname, w = fields[0], fields[1]
            if w not in label_of:
                raise DataError(f"{ann}, line {lineno}: class {w} is not in {root / 'wnids.txt'}")
            p = val / "images" / fname
            if not p.is_file():
                raise DataError(f"tinyimagenet test (= official val) split: {p} is listed in {ann} but "
                                f"missing.\nExpected layout: {LAYOUT}.")
            entries.append((label_of[w], _natural_key(fname), p))
        if not entries:
            raise DataError(f"{ann} lists no images.\nExpected layout: {LAYOUT}.")
    elif any((val / w).is_dir() for w in wnids):
        entries = []
        for w in wnids:
            d = val / w / "images" if (val / w / "images").is_dir() else val / w
            if d.is_dir():
                entries += [(label_of[w], _natural_key(p.name), p) for p in _images_in(d)]
    else:
        raise DataError(f"tinyimagenet test (= official val) split: {ann} not found.\n"
                        f"Expected layout: {LAYOUT}.")
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in entries], np.asarray([e[0] for e in entries], dtype=np.int64)


def _decode(path: Path) -> np.ndarray:
    """One image as uint8 (3, 64, 64)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot decode image {path} ({e}); the file is corrupt: re-extract it") from e
    if arr.shape != (SIZE, SIZE, 3):
        raise DataError(f"{path}: expected a {SIZE}x{SIZE} image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr.transpose(2, 0, 1)


def decode_all(paths: list[Path], workers: int | None = None) -> np.ndarray:
    """Decode ``paths`` into one uint8 (N, 3, 64, 64) array with a thread pool (Pillow releases the GIL)."""
    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)

    def work(i: int) -> None:
        out[i] = _decode(paths[i])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=256):
            pass
    return out


def fingerprint(root: Path, split: str, paths: list[Path], labels: np.ndarray) -> str:
    """Hash of the data folder, every file's relative name, size and mtime, and the labels."""
    h = hashlib.sha256(f"lipcert-tinyimagenet-v{_CACHE_FORMAT}|{root.resolve()}|{split}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(labels.tobytes())
    return h.hexdigest()[:20]


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cache_paths(split: str, key: str) -> tuple[Path, Path]:
    d = cache_dir()
    return d / f"tinyimagenet-{split}-{key}.x.npy", d / f"tinyimagenet-{split}-{key}.y.npy"


def _read_cache(x_path: Path, y_path: Path, labels: np.ndarray) -> np.ndarray | None:
    """Cached images if both files exist and agree with the listing; None otherwise."""
    if not (x_path.is_file() and y_path.is_file()):
        return None
    try:
        y = np.load(y_path, allow_pickle=False)
        x = np.load(x_path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if x.dtype != np.uint8 or x.shape != (len(labels), 3, SIZE, SIZE) or not np.array_equal(y, labels):
        return None
    return x


def load_tinyimagenet_split(split: str, root: Path, expected_n: int) -> tuple[np.ndarray, np.ndarray]:
    """One TinyImageNet split as uint8 (N, 3, 64, 64) and int64 labels, via the on-disk cache."""
    root = find_root(root)
    paths, labels = list_files(root, split)
    if len(paths) != expected_n:
        warnings.warn(f"tinyimagenet {split}: found {len(paths)} images under {root}, the official split "
                      f"has {expected_n}; continuing with what is there", DataWarning, stacklevel=4)
    x_path, y_path = _cache_paths(split, fingerprint(root, split, paths, labels))
    x = _read_cache(x_path, y_path, labels)
    if x is not None:
        return x, labels
    x = decode_all(paths)
    try:
        x_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(y_path, labels)
        _atomic_save(x_path, x)
    except OSError as e:
        warnings.warn(f"could not write the TinyImageNet cache {x_path} ({e}); the next load will decode "
                      "the JPEGs again. Set LIPCERT_CACHE_DIR to a writable folder.", DataWarning, stacklevel=4)
    return x, labels
