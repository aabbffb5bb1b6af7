"""Writers for the real on-disk dataset formats, used to build small fixture files in tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian row-major data."""
    dt = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    header = bytes([0, 0, _IDX_CODES[dt], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dt).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist_like(directory: Path, rng: np.random.Generator, n_train: int = 7, n_test: int = 5,
                     gz: bool = False, dotted: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST IDX files with random content; returns the arrays written per split."""
    out = {}
    sep = "." if dotted else "-"
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{stem}-images{sep}idx3-ubyte{suffix}", x, gz)
        write_idx(directory / f"{stem}-labels{sep}idx1-ubyte{suffix}", y, gz)
        out[split] = (x, y)
    return out


class Py2StylePickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 ``str`` (BINSTRING), as the CIFAR batches were written
    by Python 2's cPickle; with ``encoding="bytes"`` they load back as bytes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2str
    dispatch[bytes] = save_py2str


def py2_pickle_bytes(obj) -> bytes:
    """A protocol-2 pickle like Python 2 + numpy 1.x wrote: py2 strings, numpy.core.multiarray globals."""
    import io

    buf = io.BytesIO()
    Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(rng: np.random.Generator, n: int, label_keys: dict[str, int]) -> tuple[dict, np.ndarray, dict]:
    """A CIFAR batch dict (str keys) with random uint8 data (n, 3072) and random labels per key."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = {k: [int(v) for v in rng.integers(0, m, size=n)] for k, m in label_keys.items()}
    d = {"batch_label": "testing batch 1 of 1", "data": data, "filenames": [f"img_{i}.png" for i in range(n)]}
    d.update(labels)
    return d, data, labels


def write_pickle(path: Path, obj, py2: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle_bytes(obj) if py2 else pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return path
