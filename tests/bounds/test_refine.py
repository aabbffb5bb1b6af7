"""The l2 refinement of Thm 3.2 (Eq. 16), the choices of T, and the Prop. 3.1 block bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipcert.bounds.liplt import as_ltnet, liplt
from lipcert.bounds.refine import (
    aol_t,
    block_bound,
    prop31_block_bound,
    residual_block_bounds,
    residual_product_bound,
    single_layer_bounds,
)
from lipcert.models import build

from .liplt_helpers import empirical_lipschitz, mlp


def test_aol_t_dominates_gram():
    g = torch.randn(9, 6, dtype=torch.float64)
    t = aol_t(g)
    assert torch.linalg.eigvalsh(torch.diag(t) - g.T @ g).min() >= 0


@pytest.mark.parametrize("residual", [False, True])
def test_block_bound_sound_and_spectral_is_eq15(residual):
    torch.manual_seed(0)
    n, m = 6, 10
    W = torch.randn(m, n, dtype=torch.float64)
    G = torch.randn(n, m, dtype=torch.float64) * 0.3
    H = 0.7 if residual else None
    spec = block_bound(W, G, H, 0.0, 1.0, "spectral")
    Hm = 0.7 * torch.eye(n, dtype=torch.float64) if residual else torch.zeros(n, n, dtype=torch.float64)
    eq15 = torch.linalg.matrix_norm(Hm + 0.5 * G @ W, 2) + 0.5 * torch.linalg.matrix_norm(G, 2) * torch.linalg.matrix_norm(W, 2)
    assert spec.value == pytest.approx(float(eq15), rel=1e-9)
    best = block_bound(W, G, H, 0.0, 1.0, "best")
    assert best.value <= spec.value
    # empirical Lipschitz constant of h(x) = H x + G relu(W x)
    x = torch.randn(4000, n, dtype=torch.float64, requires_grad=True)
    h = (x @ Hm.T) + torch.relu(x @ W.T) @ G.T
    jac_norms = []
    for k in range(n):
        jac_norms.append(torch.autograd.grad(h[:, k].sum(), x, retain_graph=True)[0])
    j = torch.stack(jac_norms, 1)  # (B, n_out, n_in)
    assert float(torch.linalg.matrix_norm(j, 2).max()) <= best.value


def test_single_layer_pairwise_refinement():
    model = mlp(widths=(12, 40, 6), seed=2)
    net = as_ltnet(model)
    w0, w1 = net.stages[0].W.weight, net.last.weight
    pair, cls, full = single_layer_bounds(w0, w1, 0.0, 1.0, "best", 2.01 * 2.0**-53)
    plain = liplt(model, refine=False)
    assert (pair <= plain.pairwise * (1 + 1e-9)).all() and full <= plain.lipschitz * (1 + 1e-9)
    refined = liplt(model)
    torch.testing.assert_close(refined.pairwise, torch.minimum(plain.pairwise, pair))
    c = torch.zeros(6)
    c[0], c[3] = 1, -1
    assert empirical_lipschitz(model, c, model.in_shape, n=256, steps=30) <= refined.pairwise[0, 3]


@pytest.mark.parametrize("t_rule", ["aol", "sll"])
def test_prop31_layers_verified_sqrt_rho(t_rule):
    torch.manual_seed(1)
    model = build("resmlp_l2", in_shape=(1, 3, 4), width=10, depth=2, rho=2.0, t_rule=t_rule)
    with torch.no_grad():
        model[5].log_rho.fill_(math.log(0.5))
    net = as_ltnet(model)
    b = [prop31_block_bound(st) for st in net.stages]
    assert b[0] is None
    for k, layer in ((1, model[4]), (2, model[5])):  # sqrt(rho) of the stored (float32) log rho
        sr = math.sqrt(math.exp(float(layer.log_rho.double())))
        assert b[k] == pytest.approx(sr, rel=1e-9) and b[k] >= sr * (1 - 1e-15)
    assert b[1] == pytest.approx(math.sqrt(2.0), rel=1e-6) and b[2] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert all(bb is None or bb.value >= 0 for bb in residual_block_bounds(net))
    prod = residual_product_bound(net)
    assert liplt(model).lipschitz <= prod * (1 + 1e-12)


def _one_hidden_maxmin(w0, w1, b1=None, act="maxmin"):
    from lipcert.models.mcnf import MCNF
    from lipcert.nn.activations import make_activation
    from lipcert.nn.common import Flatten

    lin0 = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    lin1 = nn.Linear(w1.shape[1], w1.shape[0], bias=b1 is not None)
    with torch.no_grad():
        lin0.weight.copy_(w0)
        lin1.weight.copy_(w1)
        if b1 is not None:
            lin1.bias.copy_(b1)
    return MCNF(Flatten(), lin0, make_activation(act, (w0.shape[0],)), lin1, in_shape=(w0.shape[1],)).eval()


def test_aol_refinement_not_applied_to_maxmin():
    """Eq. 16 with a diagonal T (AOL) needs an *elementwise* activation (D diagonal commutes with T);
    MaxMin's Jacobian swaps pairs. z_0 = max(0.1 u, u) has slope 1, but AOL's T = diag(1, 0) only
    sees the first (small) row of W_0 and would give 0.1."""
    model = _one_hidden_maxmin(torch.tensor([[0.1, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    res = liplt(model)
    assert float(res.pairwise[0, 1]) >= 1.0
    assert float(res.per_class[0]) >= 1.0
    assert res.lipschitz >= 1.0


@pytest.mark.parametrize("act", ["maxmin", "clipped_maxmin"])
def test_one_hidden_layer_maxmin_bounds_above_gradients(act):
    """Random one-hidden-layer MaxMin nets whose hidden rows differ a lot in norm and whose last
    layer reads only some outputs: every pairwise bound is above the largest gradient norm of
    z_i - z_j found at random points (spread out, so both orders of every pair occur)."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(5):
        w0 = torch.randn(8, 4, generator=gen, dtype=torch.float64) * torch.rand(8, 1, generator=gen, dtype=torch.float64).pow(3)
        w1 = torch.randn(3, 8, generator=gen, dtype=torch.float64) * (torch.rand(3, 8, generator=gen, dtype=torch.float64) < 0.4)
        model = _one_hidden_maxmin(w0.float(), w1.float(), act=act)
        if act == "clipped_maxmin":  # thresholds far away: the clip never binds near the points
            with torch.no_grad():
                model[2].upper.fill_(1e6)
                model[2].lower.fill_(-1e6)
        res = liplt(model)
        m64 = model.double()
        x = torch.randn(400, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
        z = m64(x)
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                (g,) = torch.autograd.grad((z[:, i] - z[:, j]).sum(), x, retain_graph=True)
                emp = float(g.norm(dim=1).max())
                assert float(res.pairwise[i, j]) >= emp * (1 - 1e-9), (trial, i, j, float(res.pairwise[i, j]), emp)
