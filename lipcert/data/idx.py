"""MNIST and Fashion-MNIST from their IDX files (gzipped or not), parsed with numpy.

IDX format (LeCun et al., the MNIST distribution): bytes 0-1 are zero, byte 2 is the element type
(0x08 = unsigned byte), byte 3 the number of dimensions d, then d big-endian uint32 sizes, then the
elements in row-major order. Images are ``00 00 08 03`` + (N, 28, 28); labels ``00 00 08 01`` + (N,).

Written by hand (not torchvision) because it is thirty lines of numpy and lets every malformed
file (bad magic, wrong dims, truncated, trailing bytes, count mismatch) get an error that names
the file and the fix.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError, DataWarning

# IDX element type code -> numpy dtype (big-endian where it matters).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_STEMS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}

# Where the four files may live relative to --data-dir, most specific first (the dataset's own
# folders before DIR itself, so a DIR holding both MNIST/ and FashionMNIST/ picks the right one).
SUBDIRS = {
    "mnist": ("MNIST/raw", "MNIST", "mnist/raw", "mnist", "."),
    "fashion-mnist": ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist/raw", "fashion-mnist",
                      "fashion-mnist/data/fashion", "fashion_mnist", "fashion", "."),
}

LAYOUT = {
    "mnist": ("DIR/ (or DIR/MNIST/raw/ as torchvision writes it, or DIR/mnist/) holding the four IDX "
              "files of the MNIST distribution: train-images-idx3-ubyte, train-labels-idx1-ubyte, "
              "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be gzipped, .gz)"),
    "fashion-mnist": ("DIR/ (or DIR/FashionMNIST/raw/ as torchvision writes it, or DIR/fashion-mnist/, "
                      "or DIR/fashion-mnist/data/fashion/ as in the zalando repository) holding the four "
                      "IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                      "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be gzipped, .gz)"),
}


def _candidates(stem: str, kind: str) -> list[str]:
    """File names a distribution may use: ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``."""
    base = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"]
    return [n for b in base for n in (b, b + ".gz")]


def _find(directory: Path, stem: str, kind: str) -> Path | None:
    for name in _candidates(stem, kind):
        p = directory / name
        if p.is_file():
            return p
    return None


def _read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped (detected by the gzip magic ``1f 8b``, not the name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); "
                            "re-extract or re-copy it from the dataset's distribution") from e
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a numpy array, checking header and size exactly."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, an IDX file has at least a 4-byte header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file: bad magic number {raw[:4].hex(' ')} "
                        "(expected 00 00 <type> <ndim>, e.g. 00 00 08 03 for MNIST images)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(raw) < expected:
        raise DataError(f"{path} is truncated: its header promises {dims} elements ({expected} bytes) "
                        f"but the file has {len(raw)} bytes; re-copy it from the dataset's distribution")
    if len(raw) > expected:
        raise DataError(f"{path} has {len(raw) - expected} unexpected trailing bytes after {dims} "
                        "elements; it is not a valid IDX file")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def locate(name: str, split: str, root: Path) -> tuple[Path, Path]:
    """Find the image and label IDX files of ``split`` under ``root``; DataError with the layout if absent."""
    img_stem, lbl_stem = _STEMS[split]
    searched = []
    partial = None
    for sub in SUBDIRS[name]:
        d = (root / sub) if sub != "." else root
        searched.append(d)
        images, labels = _find(d, img_stem, "idx3"), _find(d, lbl_stem, "idx1")
        if images is not None and labels is not None:
            return images, labels
        if partial is None and (images is not None or labels is not None):
            missing = f"{lbl_stem}-idx1-ubyte[.gz]" if images is not None else f"{img_stem}-idx3-ubyte[.gz]"
            partial = (d, missing)
    if partial is not None:
        d, missing = partial
        raise DataError(f"{name} {split} split: {d} holds only one of the two IDX files; {missing} is "
                        f"missing.\nExpected layout: {LAYOUT[name]}.\nFix: copy the missing file there "
                        "(lipcert never downloads data).")
    where = "\n  ".join(str(d) for d in searched)
    raise DataError(f"{name} {split} split not found: looked for {img_stem}-idx3-ubyte[.gz] and "
                    f"{lbl_stem}-idx1-ubyte[.gz] in\n  {where}\nExpected layout: {LAYOUT[name]}.\n"
                    "Fix: pass --data-dir DIR (Python: data_dir=DIR) pointing at that folder; "
                    "lipcert never downloads data.")


def load_idx_split(name: str, split: str, root: Path, expected_n: int, shape: tuple[int, int],
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split of an MNIST-like dataset as uint8 (N, 1, H, W) and int64 labels, fully validated."""
    img_path, lbl_path = locate(name, split, root)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != shape:
        raise DataError(f"{img_path}: expected unsigned-byte images of shape (N, {shape[0]}, {shape[1]}), "
                        f"got {images.dtype} {images.shape}; is this the right file?")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected unsigned-byte labels of shape (N,), got {labels.dtype} "
                        f"{labels.shape}; is this the right file?")
    if len(images) != len(labels):
        raise DataError(f"{name} {split}: {img_path.name} has {len(images)} images but {lbl_path.name} "
                        f"has {len(labels)} labels; the files do not belong together")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{lbl_path}: label {int(labels.max())} is out of range for {num_classes} classes")
    if len(images) != expected_n:
        warnings.warn(f"{name} {split}: found {len(images)} samples in {img_path}, the official split has "
                      f"{expected_n}; continuing with what is there", DataWarning, stacklevel=4)
    return images.reshape(-1, 1, *shape), labels.astype(np.int64)
