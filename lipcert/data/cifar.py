"""CIFAR-10 and CIFAR-100 from the "python version" pickle batches (Krizhevsky 2009).

Layouts (as the official tarballs unpack):
  cifar10:  DIR/cifar-10-batches-py/{data_batch_1..5, test_batch}  (or DIR itself holding them)
  cifar100: DIR/cifar-100-python/{train, test}                      (or DIR itself holding them)
Each file is a pickled dict with ``data`` (N, 3072) uint8 (channel-major 3x32x32) and ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100; lipcert uses the 100 fine classes).

Unpickling can execute code, so the files are read with :class:`SafeUnpickler`, which resolves only
the handful of numpy / codecs globals a dict of arrays needs and refuses everything else.
"""

from __future__ import annotations

import codecs
import io
import pickle
import warnings
from pathlib import Path

import numpy as np

from .errors import DataError, DataWarning

SPEC = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "label_key": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "files": {"train": ["train"], "test": ["test"]},
        "label_key": "fine_labels",
    },
}

LAYOUT = {
    "cifar10": ("DIR/cifar-10-batches-py/ (as the official 'python version' tarball unpacks; or DIR "
                "itself) holding the pickle batches data_batch_1 ... data_batch_5 and test_batch"),
    "cifar100": ("DIR/cifar-100-python/ (as the official 'python version' tarball unpacks; or DIR "
                 "itself) holding the pickle files train and test"),
}


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled dict of numpy arrays refers to (numpy 1.x and 2.x spellings)."""
    try:  # numpy >= 2
        from numpy._core import multiarray as ma
        from numpy._core import numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma
        from numpy.core import numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = ma._reconstruct
        allowed[(mod, "scalar")] = ma.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = numeric._frombuffer  # protocol-5 arrays: np.frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain containers and numpy arrays, and nothing else.

    Any other global (a class or function the pickle wants to import and call) raises
    ``pickle.UnpicklingError`` before it is imported, so a crafted file cannot run code.
    """

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a dataset file should "
                                         "only contain numpy arrays, lists and dicts") from None


def safe_load_pickle(path: Path) -> object:
    """Unpickle ``path`` with :class:`SafeUnpickler` (bytes as bytes, as the Python 2 batches need)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise DataError(f"{path} is not a valid CIFAR pickle batch ({type(e).__name__}: {e}); it may be "
                        "truncated or corrupt: re-extract it from the official tarball") from e


def _str_keys(d: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and '{label_key}', got {type(obj).__name__}")
    d = _str_keys(obj)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: the dict has keys {sorted(d)}, expected 'data' and '{label_key}'; "
                        "is this the right dataset's file?")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' should be a uint8 array of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: '{label_key}' is not a list of integers ({e})") from e
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels in '{label_key}'")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1} (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


def locate(name: str, split: str, root: Path) -> list[Path]:
    """Paths of the batch files of ``split``; DataError naming the expected layout if absent."""
    spec = SPEC[name]
    files = spec["files"][split]
    dirs = [root / spec["folder"], root]
    for d in dirs:
        paths = [d / f for f in files]
        if all(p.is_file() for p in paths):
            return paths
    # Report the missing files of the most plausible folder (the one holding some of them).
    for d in dirs:
        present = [f for f in files if (d / f).is_file()]
        if present:
            missing = [f for f in files if f not in present]
            raise DataError(f"{name} {split} split: {d} is missing {', '.join(missing)}.\n"
                            f"Expected layout: {LAYOUT[name]}.\nFix: re-extract the official tarball "
                            "there (lipcert never downloads data).")
    where = "\n  ".join(str(d) for d in dirs)
    raise DataError(f"{name} {split} split not found: looked for {', '.join(files)} in\n  {where}\n"
                    f"Expected layout: {LAYOUT[name]}.\nFix: pass --data-dir DIR (Python: data_dir=DIR) "
                    "where the official 'python version' tarball was extracted; lipcert never downloads data.")


def load_cifar_split(name: str, split: str, root: Path, expected_n: int,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR split as uint8 (N, 3, 32, 32) and int64 labels."""
    parts = [_read_batch(p, SPEC[name]["label_key"], num_classes) for p in locate(name, split, root)]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if len(x) != expected_n:
        warnings.warn(f"{name} {split}: found {len(x)} samples, the official split has {expected_n}; "
                      "continuing with what is there", DataWarning, stacklevel=4)
    return np.ascontiguousarray(x), y
