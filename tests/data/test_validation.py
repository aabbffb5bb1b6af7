"""The validation split carved from a training split: stratified, disjoint, deterministic."""

from __future__ import annotations

import pytest
import torch

from lipcert import data
from lipcert.data import DataError, validation_split


def test_split_is_a_stratified_partition_of_the_train_split():
    _, y = data.load("digits", "train")
    tr, va = validation_split(y, 0.2, seed=0)
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(len(y)))  # disjoint, covers all
    assert torch.all(tr[1:] > tr[:-1]) and torch.all(va[1:] > va[:-1])
    counts, val_counts = torch.bincount(y), torch.bincount(y[va], minlength=10)
    assert torch.all((val_counts - 0.2 * counts).abs() <= 0.5 + 1e-9)  # round-half-up per class


def test_split_depends_on_the_seed_only():
    _, y = data.load("digits", "train")
    a, b = validation_split(y, 0.2, 0)[1], validation_split(y, 0.2, 0)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, validation_split(y, 0.2, 1)[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1e-6])
def test_bad_fractions_are_clear(fraction):
    y = torch.arange(10) % 2
    with pytest.raises(DataError, match="val_fraction"):
        validation_split(y, fraction)
