"""LTNet (Fazlyab23 Eq. 17): parsing, spans, and the batched sweeps against plain per-span products."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipcert.bounds.liplt import as_ltnet
from lipcert.bounds.ltnet import LTError, LTNet, SweepState, register_slopes, slope_bounds
from lipcert.models import build
from lipcert.nn.activations import MaxMin, ReLU, ReLUTheta

from .liplt_helpers import convnet, mlp


def span_matrix(net: LTNet, sp) -> torch.Tensor:
    """The span's matrix (out, in) by applying its atoms one by one to the identity (reference)."""
    n = math.prod(sp.in_shape)
    x = torch.eye(n, dtype=torch.float64).view(n, *sp.in_shape)
    for a in sp.atoms:
        atom = net.atoms[a]
        x = atom.forward(x.reshape(n, *atom.in_shape))
    return x.reshape(n, -1).T


def test_parse_mlp_conv_residual():
    net = as_ltnet(mlp())
    assert net.depth == 2 and net.num_classes == 5 and [st.c for st in net.stages] == [0.5, 0.5]
    net = as_ltnet(convnet())
    assert net.depth == 3 and net.W(0).in_shape == (2, 8, 8) and net.W(2).in_shape == (6, 4, 4)
    net = as_ltnet(build("resmlp_l2", in_shape=(1, 4, 4), width=8, depth=2))
    assert net.depth == 3 and [st.residual for st in net.stages] == [False, True, True]
    assert net.span(2, 3).atoms[0] == net.atoms.index(net.stages[1].G)


def test_slopes():
    assert slope_bounds(ReLU()) == (0.0, 1.0) and slope_bounds(ReLUTheta((3,))) == (0.0, 1.0)
    assert slope_bounds(MaxMin()) == (-1.0, 1.0) and slope_bounds(nn.ReLU()) == (0.0, 1.0)

    class Leaky(nn.Module):
        slope_bounds = (0.1, 1.0)

    assert slope_bounds(Leaky()) == (0.1, 1.0)
    with pytest.raises(LTError, match="no slope bounds"):
        slope_bounds(nn.Tanh())
    with pytest.raises(ValueError):
        register_slopes(nn.Tanh, 1.0, 0.0)


@pytest.mark.parametrize(
    "model,message",
    [
        (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "not supported"),
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "must end with a Linear"),
        (nn.Sequential(nn.ReLU(), nn.Linear(4, 3)), "must directly follow"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)), "dilation"),
    ],
)
def test_clear_errors(model, message):
    with pytest.raises(LTError, match=message):
        LTNet.from_model(model, in_shape=(4,) if not isinstance(model[0], nn.Conv2d) else (1, 5, 5))


def test_missing_in_shape():
    with pytest.raises(LTError, match="input shape"):
        LTNet.from_model(nn.Sequential(nn.Linear(4, 3)))


@pytest.mark.parametrize("kind", ["mlp", "conv", "residual"])
def test_sweeps_match_per_span_products(kind):
    model = {"mlp": mlp(), "conv": convnet(), "residual": build("resmlp_l2", in_shape=(1, 3, 3), width=6, depth=2)}[kind]
    net = as_ltnet(model)
    spans = net.spans(last=True)
    g = torch.Generator().manual_seed(0)
    u = [torch.randn((2, *sp.in_shape), generator=g, dtype=torch.float64) for sp in spans]
    v = [torch.randn((2, *sp.out_shape), generator=g, dtype=torch.float64) for sp in spans]
    state = SweepState()
    fw = net.sweep_forward(spans, u, state)
    assert state.calls == net.depth + 1  # one call per layer for all spans (Fazlyab23 §3.1 Complexity)
    ad = net.sweep_adjoint(spans, v)
    for sp, ui, vi, f, a in zip(spans, u, v, fw, ad):
        m = span_matrix(net, sp)
        torch.testing.assert_close(f.reshape(2, -1), ui.reshape(2, -1) @ m.T)
        torch.testing.assert_close(a.reshape(2, -1), vi.reshape(2, -1) @ m)


def test_rows_are_the_last_spans():
    net = as_ltnet(build("resmlp_l2", in_shape=(1, 3, 3), width=6, depth=2))
    rows, suffix = net.rows()
    for s in range(net.depth + 1):
        torch.testing.assert_close(rows[s].reshape(net.num_classes, -1), span_matrix(net, net.span(s, net.depth)))


def test_span_scalars_relu():
    net = as_ltnet(mlp(widths=(12, 8, 8, 8, 3)))
    assert net.span(0, 3).scalar == 0.125 and net.span(2, 3).scalar == 0.5 and net.span(3, 3).scalar == 1.0
    # MaxMin: c = 0, d = 1 -> only single-layer spans matter
    net = as_ltnet(mlp(widths=(12, 8, 8, 3), activation="maxmin"))
    assert net.span(0, 2).scalar == 0.0 and [st.d for st in net.stages] == [1.0, 1.0]
