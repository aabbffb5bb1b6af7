"""Activations of Huang21 (ReLU, ReLU-theta, MaxMin, clipped MaxMin): forward, box and mask rules, Lipschitz."""

from __future__ import annotations

import pytest
import torch

from lipcert.nn.activations import ClippedMaxMin, MaxMin, ReLU, ReLUTheta, make_activation
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

SHAPE = (4, 3, 3)


def _acts():
    torch.manual_seed(0)
    r = ReLUTheta(SHAPE, 1.0)
    with torch.no_grad():
        r.theta.uniform_(0.2, 1.5)
    c = ClippedMaxMin((SHAPE[0] // 2, *SHAPE[1:]), 1.0)
    with torch.no_grad():
        c.upper.uniform_(0.0, 1.0)
        c.lower.uniform_(-1.0, 0.0)
    return {"relu": ReLU(), "relu_theta": r, "maxmin": MaxMin(), "clipped_maxmin": c}


def _random_box(n=64):
    lo = torch.randn(n, *SHAPE) * 1.5
    width = torch.rand(n, *SHAPE) * torch.where(torch.rand(n, *SHAPE) < 0.2, 0.0, 1.0)  # some degenerate
    return lo, lo + width


def _points(lo, hi, k=50):
    t = torch.rand(k, *lo.shape)
    t[0], t[1] = 0.0, 1.0  # the corners lo and hi themselves
    return lo + t * (hi - lo)


def test_forward_formulas():
    z = torch.tensor([[-1.0, 0.5, 2.0, 0.9]])
    r = ReLUTheta(4, 1.0)
    assert torch.equal(r(z), torch.tensor([[0.0, 0.5, 1.0, 0.9]]))  # Huang21 Eq. 8
    assert torch.equal(MaxMin()(z), torch.tensor([[2.0, 0.9, -1.0, 0.5]]))  # pairs (z0, z2), (z1, z3)
    c = ClippedMaxMin(2, 1.0)  # a = 1, b = -1
    assert torch.equal(c(torch.tensor([[-3.0, 0.5, 2.0, 0.9]])), torch.tensor([[1.0, 0.9, -1.0, 0.5]]))


@pytest.mark.parametrize("name", ["relu", "relu_theta", "maxmin", "clipped_maxmin"])
def test_box_rule_contains_every_output(name):
    act = _acts()[name]
    lo, hi = _random_box()
    olo, ohi = act.box(lo, hi)
    pts = _points(lo, hi)
    with torch.no_grad():
        out = torch.stack([act(p) for p in pts])
    assert (out >= olo - 1e-6).all() and (out <= ohi + 1e-6).all()
    # tight for elementwise activations: the corners reach the bounds
    if name in ("relu", "relu_theta"):
        with torch.no_grad():
            torch.testing.assert_close(torch.minimum(act(lo), act(hi)), olo)
            torch.testing.assert_close(torch.maximum(act(lo), act(hi)), ohi)


@pytest.mark.parametrize("name", ["relu", "relu_theta", "maxmin", "clipped_maxmin"])
def test_masks_constant_outputs_and_irrelevant_inputs(name):
    """Outputs outside out_mask are constant on the box; varying outputs ignore inputs outside in_mask."""
    act = _acts()[name]
    lo, hi = _random_box()
    in_mask, out_mask = act.varying(lo, hi)
    pts = _points(lo, hi)
    with torch.no_grad():
        out = torch.stack([act(p) for p in pts])
        spread = out.amax(0) - out.amin(0)
        assert (spread[~out_mask] == 0).all(), "an output flagged constant changed inside the box"
        # move the inputs outside in_mask, keep the others: varying outputs must not move
        base = pts[2]
        moved = torch.where(in_mask, base, pts[3])
        assert torch.equal(act(base)[out_mask], act(moved)[out_mask])
    assert in_mask.dtype == torch.bool and out_mask.dtype == torch.bool
    if name == "relu_theta":  # Huang21 Eq. 9 literally
        th = act.theta.detach()
        assert torch.equal(out_mask, (hi > 0) & (lo < th) & (hi > lo))


def test_masks_find_constant_regions():
    r = ReLUTheta(3, 1.0)
    lo = torch.tensor([[-2.0, 1.2, -0.1]])
    hi = torch.tensor([[-1.0, 3.0, 0.1]])
    _, m = r.varying(lo, hi)
    assert m.tolist() == [[False, False, True]]  # dead, saturated at theta, varying (Huang21 App. A.1)
    c = ClippedMaxMin(1, 1.0)
    # max of the pair >= 2 > a = 1 -> constant; min of the pair <= -3 < b = -1 -> constant
    im, om = c.varying(torch.tensor([[2.0, -5.0]]), torch.tensor([[3.0, -3.0]]))
    assert om.tolist() == [[False, False]] and im.tolist() == [[False, False]]
    im, om = c.varying(torch.tensor([[0.0, -5.0]]), torch.tensor([[3.0, -3.0]]))
    assert om.tolist() == [[True, False]] and im.tolist() == [[True, True]]  # both inputs feed the max


@pytest.mark.parametrize("name", ["relu", "relu_theta", "maxmin", "clipped_maxmin"])
def test_one_lipschitz_and_error_rule(name):
    act = _acts()[name]
    a = torch.randn(500, *SHAPE) * 2
    b = a + torch.randn_like(a) * torch.rand(500, 1, 1, 1)
    with torch.no_grad():
        fa, fb = act(a), act(b)
    assert ((fa - fb).flatten(1).norm(dim=1) <= (a - b).flatten(1).norm(dim=1) * (1 + 1e-6) + 1e-6).all()
    assert ((fa - fb).abs() <= act.error_rule((a - b).abs()) + 1e-6).all()


def test_projection_and_sparsity_gaps():
    r = ReLUTheta(3, 1.0)
    with torch.no_grad():
        r.theta.copy_(torch.tensor([-0.5, 0.3, 2.0]))
    r.project_()
    assert r.theta.tolist() == [0.0, pytest.approx(0.3), 2.0]
    lo, hi = torch.tensor([[-1.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 3.0]])
    dead, sat = r.sparsity_gaps(lo, hi)
    assert torch.equal(dead, hi)
    torch.testing.assert_close(sat, r.theta.detach() - lo)
    c = ClippedMaxMin(1, 1.0)
    with torch.no_grad():
        c.upper.fill_(-1.0)
        c.lower.fill_(1.0)
    c.project_()
    assert float(c.upper.detach()) == 0.0 and float(c.lower.detach()) == 0.0
    d, s = c.sparsity_gaps(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 3.0]]))
    assert float(d.detach()) == 2.0 - 0.0 and float(s.detach()) == 0.0 - 1.0  # UB_min - b, a - LB_max (Huang21 Eq. 12)


def test_thresholds_get_gradients():
    r = ReLUTheta(2, 0.5)
    r(torch.tensor([[1.0, 0.2]])).sum().backward()
    assert r.theta.grad.tolist() == [1.0, 0.0]


def test_make_activation_and_errors():
    assert isinstance(make_activation("relu", (4,)), ReLU)
    assert make_activation("relu_theta", (4, 2, 2), 2.0).theta.shape == (4, 2, 2)
    assert make_activation("clipped_maxmin", (4, 2, 2)).upper.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="even"):
        make_activation("maxmin", (3,))
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("tanh", (3,))
    with pytest.raises(ValueError, match="clipped_maxmin"):
        MaxMin().sparsity_gaps(torch.zeros(1, 2), torch.ones(1, 2))
