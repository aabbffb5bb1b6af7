"""LipLT (Fazlyab23 Thm 3.3 / Eq. 19): soundness against attacks, <= naive, the authors' ReLU recursion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipcert.bounds.liplt import LipLTEstimator, liplt, naive_bounds
from lipcert.bounds.span_norms import Budget
from lipcert.models import build
from lipcert.models.mcnf import MCNF
from lipcert.nn.common import Flatten

from .liplt_helpers import blobs, convnet, empirical_lipschitz, mlp, train_ce

REL = 1e-9  # ulp-level slack of rigorous rounding


def nets():
    torch.manual_seed(3)
    trained_mlp = train_ce(mlp(widths=(12, 32, 32, 32, 5)), *blobs(200, (1, 3, 4), 5), steps=60)
    trained_conv = train_ce(convnet(), *blobs(120, (2, 8, 8), 4), steps=40)
    return {
        "mlp": mlp(widths=(12, 32, 32, 32, 5)),
        "mlp_trained": trained_mlp,
        "conv": convnet(),
        "conv_trained": trained_conv,
        "relu_theta": mlp(widths=(12, 16, 16, 5), activation="relu_theta"),
        "maxmin": mlp(widths=(12, 16, 16, 5), activation="maxmin"),
        "residual": build("resmlp_l2", in_shape=(1, 3, 4), width=16, depth=3),
    }


NETS = nets()


@pytest.mark.parametrize("name", sorted(NETS))
def test_liplt_below_naive(name):
    model = NETS[name]
    up, nv = liplt(model), naive_bounds(model)
    assert up.kind == "upper" and nv.kind == "upper"
    assert up.lipschitz <= nv.lipschitz * (1 + REL)
    assert (up.pairwise <= nv.pairwise * (1 + REL)).all()
    assert (up.per_class <= nv.per_class * (1 + REL)).all()
    # hidden bounds too (Thm 3.3 for every prefix); none of these use the refinement
    raw = liplt(model, refine=False)
    assert all(a <= b * (1 + REL) for a, b in zip(raw.hidden, nv.hidden))
    assert raw.lipschitz <= nv.lipschitz * (1 + REL)


@pytest.mark.parametrize("name", ["mlp", "conv", "conv_trained"])
def test_liplt_is_much_tighter_on_relu_nets(name):
    model = NETS[name]
    assert liplt(model).pairs().mean() < 0.7 * naive_bounds(model).pairs().mean()


def test_maxmin_gains_nothing():
    model = NETS["maxmin"]
    assert liplt(model).lipschitz == pytest.approx(naive_bounds(model).lipschitz, rel=1e-9)


@pytest.mark.parametrize("name", ["mlp_trained", "conv_trained", "relu_theta", "residual", "maxmin"])
def test_liplt_above_empirical_lipschitz(name):
    """LipLT >= the largest gradient norm / difference quotient of z_i - z_j found by sampling and attack."""
    model = NETS[name]
    res = liplt(model)
    k = res.pairwise.shape[0]
    in_shape = model.in_shape
    for i, j in [(0, 1), (1, k - 1), (2, 0)]:
        c = torch.zeros(k)
        c[i], c[j] = 1.0, -1.0
        emp = empirical_lipschitz(model, c, in_shape, n=96 if "conv" in name else 160, steps=15 if "conv" in name else 20)
        assert emp <= res.pairwise[i, j], (i, j, emp, float(res.pairwise[i, j]))
        assert emp > 0.05 * res.pairwise[i, j]  # the attack is not vacuous
    emp_i = empirical_lipschitz(model, torch.eye(k)[1], in_shape, n=96, steps=15)
    assert emp_i <= res.per_class[1]


def test_linear_network_is_exact():
    """With no nonlinearity (c = 1, d = 0) LipLT is ||W_L ... W_0||: the true constant."""
    torch.manual_seed(0)
    layers = [Flatten(), nn.Linear(6, 9), nn.Linear(9, 7), nn.Linear(7, 4)]
    model = MCNF(*layers, in_shape=(6,))
    a = layers[3].weight.double() @ layers[2].weight.double() @ layers[1].weight.double()
    res = liplt(model)
    assert res.lipschitz == pytest.approx(float(torch.linalg.matrix_norm(a.detach(), 2)), rel=1e-9)
    d = (a[0] - a[2]).detach().norm()
    assert float(res.pairwise[0, 2]) == pytest.approx(float(d), rel=1e-9)


def test_relu_recursion_matches_the_authors_formula():
    """m_i = sum_{j<i} 0.5^(j+1) ||W_i ... W_(i-j)|| m_(i-1-j) + 0.5^i ||W_i ... W_0|| (exact norms)."""
    model = mlp(widths=(12, 10, 9, 8, 4), normalize=False)
    ws = [m.weight.detach().double() for m in model if isinstance(m, nn.Linear)]

    def prod(i, j):  # W_i ... W_j
        out = ws[j]
        for k in range(j + 1, i + 1):
            out = ws[k] @ out
        return float(torch.linalg.matrix_norm(out, 2))

    m = [prod(0, 0)]
    for i in range(1, len(ws)):
        m.append(sum(0.5 ** (j + 1) * prod(i, i - j) * m[i - 1 - j] for j in range(i)) + 0.5**i * prod(i, 0))
    res = liplt(model, refine=False)
    assert res.hidden + [res.lipschitz] == pytest.approx(m, rel=1e-9)


def test_estimate_close_to_upper_and_labelled():
    model = NETS["mlp_trained"]
    up, est = liplt(model), liplt(model, "estimate", iters=400, tol=1e-9)
    assert est.kind == "estimate" and set(est.span_kinds.values()) == {"estimate"}
    raw = liplt(model, refine=False)
    assert est.lipschitz <= up.lipschitz * (1 + REL)
    assert est.lipschitz <= raw.lipschitz * (1 + REL)
    assert est.lipschitz == pytest.approx(raw.lipschitz, rel=1e-3)


def test_products_only_still_sound():
    model = NETS["conv_trained"]
    loose, tight = liplt(model, budget=Budget.none(), refine=False), liplt(model, refine=False)
    assert tight.lipschitz <= loose.lipschitz * (1 + REL) <= naive_bounds(model).lipschitz * (1 + 2 * REL)
    assert set(loose.span_kinds.values()) <= {"single", "product"}


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        liplt(NETS["mlp"], "exact")


def test_estimator_matches_estimate_and_has_gradients():
    model = mlp(widths=(12, 16, 16, 5))
    est = LipLTEstimator(iters=200)
    out = est(model)
    ref = liplt(model, "estimate", iters=400, tol=1e-10)
    torch.testing.assert_close(out.pairwise.detach().double(), ref.pairwise, rtol=1e-4, atol=1e-6)
    out.pairwise.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.dim() == 2)
    naive = LipLTEstimator("naive", iters=200)(model)
    assert (out.pairwise <= naive.pairwise * (1 + 1e-4) + 1e-6).all()
    with pytest.raises(ValueError):
        LipLTEstimator("sdp")


def test_input_normalisation_is_folded():
    """Bounds are in raw input units: scaling std by 2 halves every bound."""
    a = mlp(widths=(12, 16, 5), seed=1)
    b = mlp(widths=(12, 16, 5), seed=1)
    b[0].std.mul_(2.0)
    assert liplt(b).lipschitz == pytest.approx(liplt(a).lipschitz / 2, rel=1e-9)
