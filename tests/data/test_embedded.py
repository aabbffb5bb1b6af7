"""lipcert/data/embedded.py: the shipped datasets and their fixed, pinned splits."""

import hashlib

import numpy as np
import pytest
import torch

from lipcert import data
from lipcert.data import embedded


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# Pinned: these must never change between versions (results refer to the split).
PINNED = {
    "digits": {
        "x": "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3",
        "y": "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21",
        "test_idx": "13dcf57fdb4f693217b8358b7c700a09cd994b27057f9355aae354b6059ac254",
        "test_head": [4, 5, 6, 9, 14, 17, 18, 19],
    },
    "mnist5k": {
        "x": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
        "y": "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367",
        "test_idx": "7c8994e2c627b28789bda808e55d07456a59a87bbf00f2c05262cdbcb6511b0a",
        "test_head": [9, 12, 29, 30, 31, 32, 33, 34],
    },
}
SOURCES = {"digits": (embedded.digits_source, embedded.digits_split),
           "mnist5k": (embedded.mnist5k_source, embedded.mnist5k_split)}


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_source_and_split_are_pinned(name):
    source, split = SOURCES[name]
    x, y = source()
    assert sha(x) == PINNED[name]["x"], "the library's copy of the data changed"
    assert sha(y) == PINNED[name]["y"], "the library's labels changed"
    train_idx, test_idx = split(y)
    assert test_idx[:8].tolist() == PINNED[name]["test_head"]
    assert sha(test_idx.astype("<i8")) == PINNED[name]["test_idx"], "the fixed test split changed"
    assert np.intersect1d(train_idx, test_idx).size == 0
    assert np.array_equal(np.union1d(train_idx, test_idx), np.arange(len(y)))


@pytest.mark.parametrize("name, scale", [("digits", 16), ("mnist5k", 255)])
def test_load_matches_source_rows(name, scale):
    source, split = SOURCES[name]
    xs, ys = source()
    train_idx, test_idx = split(ys)
    for s, idx in (("train", train_idx), ("test", test_idx)):
        x, y = data.load(name, s)
        assert torch.equal(x, torch.from_numpy(xs[idx].astype(np.float32)) / scale)
        assert torch.equal(y, torch.from_numpy(ys[idx]))


def test_digits_shapes_ranges_balance():
    x, y = data.load("digits", "train")
    xt, yt = data.load("digits", "test")
    assert x.shape == (1438, 1, 8, 8) and xt.shape == (359, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1 and torch.equal(x * 16, (x * 16).round())
    n_c = torch.bincount(torch.cat([y, yt]), minlength=10)
    assert torch.equal(torch.bincount(yt, minlength=10), torch.floor(0.2 * n_c + 0.5).long())  # stratified


def test_mnist5k_shapes_ranges_balance():
    x, y = data.load("mnist5k", "train")
    xt, yt = data.load("mnist5k", "test")
    assert x.shape == (4000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert x.min() == 0 and x.max() == 1 and torch.equal(x * 255, (x * 255).round())
    assert torch.bincount(y).tolist() == [400] * 10 and torch.bincount(yt).tolist() == [100] * 10
    # 28x28 digits with an (almost) empty border and ink in the centre (catches a wrong reshape)
    assert x[:, :, :2].mean() < 0.01 and x[:, :, :, :2].mean() < 0.01 and x[:, :, 10:18, 10:18].mean() > 0.2


def test_stratified_split_reference():
    """The documented algorithm, written out plainly, gives the same split."""
    y = np.random.RandomState(3).randint(0, 4, size=200)
    counts = {c: 5 + c for c in range(4)}
    train_idx, test_idx = embedded.stratified_split(y, counts, seed=11)
    perm = np.random.RandomState(11).permutation(200)
    ref = []
    for c in range(4):
        ref += [i for i in perm if y[i] == c][: counts[c]]
    assert test_idx.tolist() == sorted(ref)
    assert train_idx.tolist() == [i for i in range(200) if i not in set(ref)]
    with pytest.raises(ValueError, match="cannot put"):
        embedded.stratified_split(y, {0: 1000}, seed=0)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_normalisation_constants(name):
    inf = data.info(name)
    mean, std = data.channel_stats(data.load(name, "train")[0])
    tol = 5e-5 if name == "digits" else 1e-3  # mnist5k uses full-MNIST constants (documented)
    assert mean[0] == pytest.approx(inf.mean[0], abs=tol)
    assert std[0] == pytest.approx(inf.std, abs=tol) and inf.std_per_channel == (inf.std,)
