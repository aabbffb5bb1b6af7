"""lipcert.nn.elementwise: torch's values, torch's gradients off ties, the stated tie rule."""

from __future__ import annotations

import pytest
import torch

from lipcert.nn import elementwise
from lipcert.nn.activations import ClippedMaxMin, MaxMin, ReLUTheta

SHAPES = [((5, 3, 4), (5, 3, 4)), ((5, 3, 4), (3, 4)), ((1, 3, 1), (5, 1, 4)), ((7,), ())]


def _pair(sa, sb, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(sa, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(sb, generator=g, dtype=dtype, requires_grad=True)
    return a, b


@pytest.mark.parametrize("name", ["maximum", "minimum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_values_and_gradients_match_torch(name, dtype, sa, sb):
    for seed in range(3):
        a, b = _pair(sa, sb, dtype, seed)
        ours = getattr(elementwise, name)(a, b)
        ref = getattr(torch, name)(a, b)
        assert torch.equal(ours, ref)
        g = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 10))
        ga, gb = torch.autograd.grad(ours, (a, b), g)
        ra, rb = torch.autograd.grad(ref, (a, b), g)
        assert ga.shape == a.shape and gb.shape == b.shape
        # continuous random data has no ties: the selection is the same, so the sums agree up to
        # the summation order of the broadcast reduction
        torch.testing.assert_close(ga, ra, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gb, rb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_gradcheck_float64(name):
    a, b = _pair((4, 3), (3,), torch.float64, 0)
    assert torch.autograd.gradcheck(getattr(elementwise, name), (a, b))


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_ties_send_the_gradient_to_the_first_argument(name):
    a = torch.tensor([1.0, 2.0, -3.0], requires_grad=True)
    b = torch.tensor([1.0, 0.0, 5.0], requires_grad=True)
    out = getattr(elementwise, name)(a, b)
    ga, gb = torch.autograd.grad(out.sum(), (a, b))
    win_a = [True, True, False] if name == "maximum" else [True, False, True]
    assert ga.tolist() == [1.0 if w else 0.0 for w in win_a]
    assert gb.tolist() == [0.0 if w else 1.0 for w in win_a]


def test_selection_exact_next_to_the_tie():
    """fl(a - b) > 0 iff a > b: neighbours one ulp apart are still told apart."""
    b = torch.tensor([1.0, 1e-30, -2.0, 1e-45], requires_grad=True)
    a = torch.nextafter(b.detach(), torch.full_like(b, float("inf"))).requires_grad_()
    ga, gb = torch.autograd.grad(elementwise.maximum(a, b).sum(), (a, b))
    assert ga.tolist() == [1.0] * 4 and gb.tolist() == [0.0] * 4
    ga, gb = torch.autograd.grad(elementwise.minimum(a, b).sum(), (a, b))
    assert ga.tolist() == [0.0] * 4 and gb.tolist() == [1.0] * 4


def test_clamp_values_match_torch_also_for_crossed_bounds():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 8, generator=g, requires_grad=True)
    lo = torch.randn(6, 1, 8, generator=g, requires_grad=True)
    hi = torch.randn(6, 1, 8, generator=g, requires_grad=True)  # crossed (lo > hi) in about half the places
    ours, ref = elementwise.clamp(x, lo, hi), torch.clamp(x, lo, hi)
    assert torch.equal(ours, ref)
    gx, glo, ghi = torch.autograd.grad(ours.sum(), (x, lo, hi))
    rx, rlo, rhi = torch.autograd.grad(ref.sum(), (x, lo, hi))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(glo, rlo)
    torch.testing.assert_close(ghi, rhi)


def test_no_graph_without_gradients():
    a, b = torch.randn(3), torch.randn(3)
    assert elementwise.maximum(a, b).grad_fn is None
    with torch.no_grad():
        a.requires_grad_()
        assert elementwise.minimum(a, b).grad_fn is None


def test_nan_propagates_like_torch():
    a = torch.tensor([float("nan"), 1.0])
    b = torch.tensor([0.0, float("nan")])
    for name in ("maximum", "minimum"):
        assert torch.equal(getattr(elementwise, name)(a, b).isnan(), getattr(torch, name)(a, b).isnan())


def test_relu_theta_at_zero_threshold_sends_nothing_to_theta_where_off():
    act = ReLUTheta((4,), theta_init=0.0)
    z = torch.tensor([[-1.0, -0.5, 0.5, 2.0]], requires_grad=True)
    out = act(z)
    assert out.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    gz, gth = torch.autograd.grad(out.sum(), (z, act.theta))
    assert gz.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert gth.tolist() == [0.0, 0.0, 1.0, 1.0]  # raising theta raises the output only where z > 0


def test_maxmin_jacobian_is_a_permutation_at_ties():
    act = MaxMin()
    z = torch.tensor([[1.0, 3.0, 1.0, -1.0]], requires_grad=True)  # pairs (1, 1) tie, (3, -1)
    jac = torch.autograd.functional.jacobian(act, z).reshape(4, 4)
    assert torch.equal(jac.sum(0), torch.ones(4)) and torch.equal(jac.sum(1), torch.ones(4))
    assert set(jac.flatten().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("act", [ReLUTheta((6,), 0.7), MaxMin(), ClippedMaxMin((3,), 0.5)])
def test_activation_gradients_match_the_torch_formula(act):
    """The activations' forward through elementwise agrees with torch.maximum / torch.minimum on
    tie-free data (values exactly, gradients to rounding)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 6, generator=g, dtype=torch.float64, requires_grad=True)
    params = [p for p in act.parameters()]
    out = act(z)

    def ref(z):
        if isinstance(act, ReLUTheta):
            return torch.minimum(torch.relu(z), act.theta)
        a, b = z[:, :3], z[:, 3:]
        mx, mn = torch.maximum(a, b), torch.minimum(a, b)
        if isinstance(act, ClippedMaxMin):
            mx, mn = torch.minimum(mx, act.upper), torch.maximum(mn, act.lower)
        return torch.cat([mx, mn], dim=1)

    expected = ref(z)
    assert torch.equal(out, expected)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(out, [z, *params], w)
    theirs = torch.autograd.grad(expected, [z, *params], w)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t)
