"""Layer operators on their real input shapes: adjoints, |W|, row norms, folded normalisation, masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lipcert.bounds import Composed, ConvOp, DenseOp, Masked
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

CONVS = [  # (c_in, c_out, k, stride, padding, H, W)
    (1, 3, 3, 1, 1, 7, 7),
    (2, 3, 4, 2, 1, 8, 8),
    (2, 2, 4, 2, 1, 7, 9),  # odd sizes: conv_transpose needs output_padding
    (3, 2, 4, 2, 0, 9, 6),
    (2, 4, 3, 1, 0, 5, 6),
    (2, 2, 3, 3, 2, 8, 7),
]


def _conv(cfg, dtype=torch.float64, scale=None):
    c_in, c_out, k, s, p, h, w = cfg
    weight = torch.randn(c_out, c_in, k, k, dtype=dtype)
    return ConvOp(weight, (c_in, h, w), s, p, scale)


@pytest.mark.parametrize("cfg", CONVS)
def test_conv_adjoint_and_dense(cfg):
    op = _conv(cfg)
    x = torch.randn(5, *op.in_shape, dtype=torch.float64)
    y = torch.randn(5, *op.out_shape, dtype=torch.float64)
    assert op.adjoint(y).shape == x.shape
    torch.testing.assert_close((op.forward(x) * y).sum(), (x * op.adjoint(y)).sum())
    m = op.dense()
    assert m.shape == (op.out_numel, op.in_numel)
    torch.testing.assert_close(op.forward(x).flatten(1), x.flatten(1) @ m.T)
    # |W| x and row norms from the materialised matrix
    torch.testing.assert_close(op.abs_forward(x.abs()).flatten(1), x.abs().flatten(1) @ m.abs().T)
    rows = m.norm(dim=1).view(op.out_shape)
    assert (rows <= op.row_norms().expand(op.out_shape) + 1e-12).all()
    assert (m.abs().sum(1).view(op.out_shape) <= op.row_abs_sums().expand(op.out_shape) + 1e-12).all()


def test_in_scale_folds_the_normalisation():
    cfg = (3, 4, 3, 1, 1, 6, 6)
    std = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    op = _conv(cfg, scale=1 / std)
    plain = ConvOp(op.raw_weight, op.in_shape, 1, 1)
    x = torch.rand(4, *op.in_shape, dtype=torch.float64)
    torch.testing.assert_close(op.forward(x), plain.forward(x / std.view(1, 3, 1, 1)))
    lin_w = torch.randn(5, 3 * 6 * 6, dtype=torch.float64)
    dense = DenseOp(lin_w, (3, 6, 6), 1 / std)
    torch.testing.assert_close(dense.forward(x), (x / std.view(1, 3, 1, 1)).flatten(1) @ lin_w.T)


def test_dense_op_shapes_and_errors():
    w = torch.randn(4, 12, dtype=torch.float64)
    op = DenseOp(w, (3, 2, 2))
    y = torch.randn(2, 4, dtype=torch.float64)
    assert op.adjoint(y).shape == (2, 3, 2, 2)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close((op.forward(x) * y).sum(), (x * op.adjoint(y)).sum())
    with pytest.raises(ValueError, match="takes 12 features"):
        DenseOp(w, (5, 2))
    with pytest.raises(ValueError, match="cannot take"):
        ConvOp(torch.randn(2, 3, 3, 3), (2, 5, 5))


def test_masked_and_composed_match_dense():
    op = _conv((2, 3, 3, 1, 1, 4, 4))
    m = op.dense()
    im = torch.rand(3, *op.in_shape) < 0.5
    om = torch.rand(3, *op.out_shape) < 0.5
    red = Masked(op, im, om)
    x = torch.randn(3, *op.in_shape, dtype=torch.float64)
    for b in range(3):
        mb = om[b].flatten().double()[:, None] * m * im[b].flatten().double()[None, :]
        torch.testing.assert_close(red.forward(x)[b].flatten(), mb @ x[b].flatten())
        torch.testing.assert_close(red.adjoint(red.forward(x))[b].flatten(), mb.T @ mb @ x[b].flatten())
    sub = red.select(torch.tensor([2]))
    torch.testing.assert_close(sub.forward(x[2:]), red.forward(x)[2:])
    dense = DenseOp(torch.randn(5, op.out_numel, dtype=torch.float64), op.out_shape)
    comp = Composed([op, dense])
    torch.testing.assert_close(comp.forward(x), dense.forward(op.forward(x)))
    torch.testing.assert_close(comp.adjoint(torch.ones(3, 5, dtype=torch.float64)), op.adjoint(dense.adjoint(torch.ones(3, 5, dtype=torch.float64))))
    with pytest.raises(ValueError, match="cannot compose"):
        Composed([dense, op])


def test_conv_op_matches_torch_conv_layer():
    layer = torch.nn.Conv2d(2, 3, 4, stride=2, padding=1).double()
    op = ConvOp(layer.weight, (2, 9, 9), layer.stride, layer.padding)
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(op.forward(x) + layer.bias.view(1, -1, 1, 1), layer(x))
    torch.testing.assert_close(op.forward(x), F.conv2d(x, layer.weight, stride=2, padding=1))
