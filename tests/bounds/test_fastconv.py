"""Polyphase convolution adjoint (training fast path): equals torch's conv_transpose / input gradient."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lipcert.bounds.fastconv import adjoint_kernel, conv_adjoint, fast_conv2d
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

CASES = [
    (c_in, c_out, h, w, k1, k2, s1, s2, p1, p2)
    for c_in, c_out, h, w, k1, k2, s1, s2, p1, p2 in itertools.product(
        [1, 3], [2], [7, 8], [9], [3, 4], [2, 3], [1, 2, 3], [1, 2], [0, 1, 2], [1]
    )
    if h + 2 * p1 >= k1 and w + 2 * p2 >= k2
]


def test_adjoint_is_the_input_gradient_of_conv2d():
    """<W x, y> = <x, W^T y> for every stride / padding / kernel, incl. sizes not divisible by the stride."""
    for i, case in enumerate(CASES):
        _check_adjoint(case, i)


def _check_adjoint(case, seed):
    c_in, c_out, h, w, k1, k2, s1, s2, p1, p2 = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(c_out, c_in, k1, k2, dtype=torch.float64, generator=g)
    out = F.conv2d(x, weight, stride=(s1, s2), padding=(p1, p2))
    y = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (ref,) = torch.autograd.grad((out * y).sum(), x)
    got = conv_adjoint(y, adjoint_kernel(weight, (s1, s2)), (c_in, h, w), (s1, s2), (p1, p2))
    assert got.shape == x.shape, case
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12, msg=lambda m: f"{case}: {m}")


@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 1), (0, 2))])
def test_fast_conv2d_has_torchs_gradients(stride, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 9, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    out = fast_conv2d(x, w, stride, padding, b)
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    gy = torch.randn(out.shape, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((out * gy).sum(), (x, w, b))
    want = torch.autograd.grad((ref * gy).sum(), (x, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no autograd function when nothing needs a gradient
        assert fast_conv2d(x, w, stride, padding).grad_fn is None
