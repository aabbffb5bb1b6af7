"""Rigorous spectral-norm bounds: never below the exact value, and tight where they claim to be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lipcert.bounds import ConvOp, conv_norm_upper, dense_norm_upper, reduced_dense_norm_upper
from lipcert.bounds.norms import conv_frequency_norms, polyphase_kernel, round_up

from .test_operators import CONVS
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)


def _exact(m: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(m.double(), ord=2))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (50, 20), (20, 50)])
def test_dense_norm_upper_is_exact_up_to_slack(shape):
    w = torch.randn(*shape)
    up = dense_norm_upper(w)
    exact = _exact(w)
    assert exact <= up <= exact * (1 + 1e-9)


def test_dense_norm_upper_on_rank_one_known_value():
    u, v = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0, 2.0])
    assert 15.0 <= dense_norm_upper(torch.outer(u, v)) <= 15.0 * (1 + 1e-12)  # ||u|| ||v|| = 5 * 3


@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("seed", [0, 1])
def test_conv_norm_upper_bounds_the_materialised_operator(cfg, seed):
    torch.manual_seed(seed)
    c_in, c_out, k, s, p, h, w = cfg
    weight = torch.randn(c_out, c_in, k, k)
    op = ConvOp(weight.double(), (c_in, h, w), s, p)
    exact = _exact(op.dense())
    up = conv_norm_upper(weight, (c_in, h, w), (s, s), (p, p))
    assert up >= exact, f"conv bound {up} below the exact norm {exact}"
    assert up <= 1.6 * exact  # a bound, but not a silly one on these small grids


def test_conv_norm_upper_tight_on_larger_inputs():
    """The circulant bound approaches the exact norm as the boundary shrinks relative to the grid."""
    torch.manual_seed(0)
    weight = torch.randn(4, 2, 3, 3)
    op = ConvOp(weight.double(), (2, 16, 16), 1, 1)
    exact = _exact(op.dense())
    up = conv_norm_upper(weight, (2, 16, 16), (1, 1), (1, 1))
    assert exact <= up <= 1.05 * exact


def test_conv_bound_on_positive_kernel_is_attained():
    """A non-negative kernel peaks at frequency 0: the bound equals the kernel's channel-sum matrix norm."""
    weight = torch.rand(3, 2, 3, 3)
    norms = conv_frequency_norms(weight, (2, 8, 8), (1, 1), (1, 1))
    assert float(norms.max()) == pytest.approx(_exact(weight.double().sum((2, 3))), rel=1e-12)


def test_polyphase_turns_strided_conv_into_valid_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    weight = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    y = F.conv2d(x, weight, stride=2, padding=1)
    xp = F.pad(x, (1, 1 + 2, 1, 1 + 1))  # pad, then up to a multiple of the stride
    s2d = F.pixel_unshuffle(xp, 2)  # (c, r, t) channel order, as polyphase_kernel
    y2 = F.conv2d(s2d, polyphase_kernel(weight, (2, 2)))
    torch.testing.assert_close(y2[:, :, : y.shape[2], : y.shape[3]], y)


def test_reduced_dense_norm_upper_matches_masked_svd():
    torch.manual_seed(0)
    for out_f, in_f in [(6, 9), (9, 6)]:
        w = torch.randn(out_f, in_f)
        im = (torch.rand(5, in_f) < 0.6).double()
        om = (torch.rand(5, out_f) < 0.6).double()
        got = reduced_dense_norm_upper(w, im, om)
        for b in range(5):
            exact = _exact(om[b][:, None] * w.double() * im[b][None, :])
            assert exact <= got[b] <= exact * (1 + 1e-9) + 1e-300
        full = reduced_dense_norm_upper(w, None, om)
        assert (full >= got).all()  # Prop. 1: deleting columns never increases the norm


def test_round_up_moves_up():
    assert round_up(1.0) > 1.0 and round_up(0.0) > 0.0
