"""``synthetic``: a tiny deterministic dataset with a known l-inf separation, for tests and smoke runs.

Ten classes of 1x8x8 images. Class c has a prototype whose 64 pixels are each LOW (64/255) or
HIGH (191/255), following a random binary code (distinct per class, seed 0); every sample is its
prototype plus independent integer noise uniform in [-25, 25] / 255 per pixel. Two prototypes
differ by 127/255 in at least one pixel, so any two samples of different classes are at l-inf
distance >= (127 - 2*25) / 255 = 77/255 (``LINF_SEPARATION``, about 0.302): the dataset is
r-separated with r = LINF_SEPARATION / 2, so a classifier with certified l-inf radius up to r on
every sample exists. Train 1,000 / test 200 images, labels cycling 0..9 (balanced).

Generated with numpy's legacy ``RandomState`` (stream frozen by NEP 19), so it is the same on
every machine and version.
"""

from __future__ import annotations

import numpy as np

SEED = 0
NUM_CLASSES = 10
SHAPE = (1, 8, 8)
LOW, HIGH, NOISE = 64, 191, 25
LINF_SEPARATION = (HIGH - LOW - 2 * NOISE) / 255.0
SIZES = {"train": 1000, "test": 200}


def prototypes(rng: np.random.RandomState) -> np.ndarray:
    """(10, 64) uint8 prototypes from distinct random binary codes."""
    codes = rng.randint(0, 2, size=(NUM_CLASSES, int(np.prod(SHAPE))))
    if len({c.tobytes() for c in codes}) != NUM_CLASSES:  # pragma: no cover - probability ~ 2^-58
        raise RuntimeError("synthetic prototypes collided; change SEED")
    return np.where(codes == 1, HIGH, LOW).astype(np.int16)


def load_synthetic_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``synthetic`` split as uint8 (N, 1, 8, 8) in 0..255 and int64 labels."""
    rng = np.random.RandomState(SEED)
    protos = prototypes(rng)
    out = {}
    for s in ("train", "test"):  # always draw both, in this order, so each split is fixed
        n = SIZES[s]
        y = np.arange(n, dtype=np.int64) % NUM_CLASSES
        noise = rng.randint(-NOISE, NOISE + 1, size=(n, protos.shape[1]))
        x = (protos[y] + noise).astype(np.uint8).reshape(n, *SHAPE)
        out[s] = (x, y)
    return out[split]
