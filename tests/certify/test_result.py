"""Certificate: what the accuracies mean for out-of-range radii."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert.certify import Certificate


def _cert() -> Certificate:
    # two correct samples (radius 0.2, 0.05) and one misclassified (radius 0)
    return Certificate(radius=torch.tensor([0.2, 0.05, 0.0], dtype=torch.float64), prediction=torch.tensor([1, 0, 2]),
                       label=torch.tensor([1, 0, 1]), norm="linf", method="linf_margin")


def test_accuracies_at_valid_radii():
    cert = _cert()
    assert cert.certified_accuracy(0.0) == pytest.approx(2 / 3)
    assert cert.certified_accuracy(0.1) == pytest.approx(1 / 3)
    assert cert.certified_accuracy(math.inf) == 0.0


@pytest.mark.parametrize("eps", [-0.1, -1e-12, math.nan])
def test_negative_or_nan_eps_is_refused(eps):
    """A negative eps counted the misclassified sample as certified (certified > clean accuracy)."""
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        _cert().certified_accuracy(eps)
