"""lipcert/data/synthetic.py: deterministic, balanced, and separated as documented."""

import hashlib

import numpy as np
import pytest
import torch

from lipcert import data
from lipcert.data import synthetic


def test_pinned_and_deterministic():
    x, y = synthetic.load_synthetic_split("train")
    assert hashlib.sha256(x.tobytes()).hexdigest() == "c55f5938430c449e19513ed0274bdd00de5f3c5843a19c5f2b78289378c5757a"
    x2, y2 = synthetic.load_synthetic_split("train")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_shapes_balance_stats():
    x, y = data.load("synthetic", "train")
    xt, yt = data.load("synthetic", "test")
    inf = data.info("synthetic")
    assert x.shape == (inf.train_size, *inf.in_shape) and xt.shape == (inf.test_size, *inf.in_shape)
    assert torch.bincount(y).tolist() == [100] * 10 and torch.bincount(yt).tolist() == [20] * 10
    assert 0 < x.min() and x.max() < 1
    mean, std = data.channel_stats(x)
    assert mean[0] == pytest.approx(inf.mean[0], abs=5e-5) and std[0] == pytest.approx(inf.std, abs=5e-5)
    assert not torch.equal(x[:200], xt)


def test_linf_separation_holds_by_brute_force():
    """Exact, on the integer pixel values: every cross-class pair is >= 77/255 apart in l-inf."""
    parts = [synthetic.load_synthetic_split(s) for s in ("train", "test")]
    x = torch.from_numpy(np.concatenate([p[0] for p in parts])).flatten(1).double()
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    d = torch.cdist(x, x, p=float("inf"))  # integer-valued, exact in float64
    same = y[:, None] == y[None, :]
    assert d[~same].min().item() >= synthetic.LINF_SEPARATION * 255 - 1e-9
    assert d[same].max().item() <= 2 * synthetic.NOISE
    assert synthetic.LINF_SEPARATION == pytest.approx(77 / 255)
