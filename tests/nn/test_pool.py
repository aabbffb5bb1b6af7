"""MaxPool2d facts: 1-Lipschitz in l-inf, exact, monotone interval map."""

from __future__ import annotations

import torch

from lipcert.nn import MaxPool2d
from tests.linf_family_helpers import linf_ratio, random_pairs


def test_one_lipschitz_and_exact():
    pool = MaxPool2d(2)
    a, b = random_pairs((3, 6, 6))
    assert pool.linf_lipschitz() == 1.0
    assert (linf_ratio(pool, a, b) <= 1).all()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(pool(x).double(), pool(x.double()))  # exact: max pooling does no arithmetic
    assert (pool.rounding_error(torch.ones(2), torch.ones(2), 2.0**-24) == 0).all()


def test_interval_map_contains_samples_and_is_attained():
    pool = MaxPool2d(3, stride=2, padding=1)
    lo = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    hi = lo + torch.rand_like(lo)
    lower, upper = pool.interval_bounds(lo, hi)
    assert torch.equal(lower, pool(lo)) and torch.equal(upper, pool(hi))
    for _ in range(50):
        y = pool(lo + (hi - lo) * torch.rand_like(lo))
        assert (y >= lower).all() and (y <= upper).all()
