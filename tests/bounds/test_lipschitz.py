"""Global and local Lipschitz bounds (Huang21 Eq. 2, Eq. 6): the App. A.1 toy, Thm 1, and empirical checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipcert.bounds import (
    L2Bounds,
    LipschitzChain,
    VectorStore,
    global_sigmas,
    global_upper,
    local_sigmas,
    local_upper,
    product_upper,
)
from lipcert.nn.activations import ReLUTheta

from .nets import empirical_lipschitz, l2_blobs, tiny_mcnf, train_l2_briefly
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)


def _toy():
    """Huang21 App. A.1: W1 = W2 = diag(3, 2, 1), W3 = [1 1 1], ReLU-theta with theta = 1."""
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    l1, l2, l3 = (nn.Linear(3, 3, bias=False).double(), nn.Linear(3, 3, bias=False).double(), nn.Linear(3, 1, bias=False).double())
    with torch.no_grad():
        l1.weight.copy_(w)
        l2.weight.copy_(w)
        l3.weight.fill_(1.0)
    return nn.Sequential(l1, ReLUTheta(3, 1.0).double(), l2, ReLUTheta(3, 1.0).double(), l3)


def test_toy_example_of_appendix_a1():
    model = _toy()
    chain = LipschitzChain.from_model(model, (3,))
    glob = product_upper(global_upper(chain))
    assert 9 * math.sqrt(3) <= glob <= 9 * math.sqrt(3) * (1 + 1e-12)  # Huang21 Eq. 13
    assert float(global_sigmas(chain, iters=50).prod().detach()) == pytest.approx(9 * math.sqrt(3), rel=1e-9)
    x = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    fwd = chain.forward(x)
    prop = chain.propagate(x, 0.1, fwd, sigmas=global_upper(chain))
    lo, hi = prop.bounds[0]
    torch.testing.assert_close(lo, torch.tensor([[2.7, -2.2, -0.1]], dtype=torch.float64))  # Huang21 App. A.1
    torch.testing.assert_close(hi, torch.tensor([[3.3, -1.8, 0.1]], dtype=torch.float64))
    masks = chain.masks(prop.bounds)
    assert [m[1].tolist() for m in masks] == [[[False, False, True]], [[False, False, True]]]  # I_V^1 = I_V^2
    sig, _ = local_sigmas(chain, masks, iters=20)
    assert float(sig.prod().detach()) == pytest.approx(1.0, rel=1e-12)  # Huang21 Eq. 14
    # the float64 certificate path with sound propagation agrees: estimate and provable upper bound
    an = L2Bounds(model, in_shape=(3,))
    for mode in ("estimate", "upper"):
        res = an.local(x, 0.1, mode)
        assert 1.0 <= float(res.lipschitz) <= 1.0 + 1e-9
    assert 9 * math.sqrt(3) <= an.global_upper <= 9 * math.sqrt(3) * (1 + 1e-12)


@pytest.fixture(scope="module")
def nets():
    out = {"random": tiny_mcnf("relu_theta", seed=3), "random_maxmin": tiny_mcnf("clipped_maxmin", seed=4)}
    x, y = l2_blobs(64, seed=1)
    out["trained"] = train_l2_briefly(tiny_mcnf("relu_theta", seed=5), x, y, steps=20, eps=0.3)
    return out


@pytest.mark.parametrize("which", ["random", "random_maxmin", "trained"])
def test_local_never_above_global_theorem_1(which, nets):
    model = nets[which]
    x, _ = l2_blobs(24, seed=2)
    an = L2Bounds(model)
    for eps in (0.05, 0.5):
        est = an.local(x, eps, "estimate", iters=300)
        up = an.local(x, eps, "upper")
        assert (est.lipschitz <= an.global_upper * (1 + 1e-12)).all()
        assert (up.lipschitz <= an.global_upper * (1 + 1e-12)).all()
        assert (est.sigmas <= torch.tensor(an.layer_upper, dtype=torch.float64) * (1 + 1e-12)).all()
    # a larger ball never gives a smaller bound (masks only grow)
    small, large = an.local(x, 0.05, "upper"), an.local(x, 0.5, "upper")
    assert (small.lipschitz <= large.lipschitz * (1 + 1e-12)).all()
    assert (small.varying <= large.varying).all()


@pytest.mark.parametrize("which", ["random", "random_maxmin", "trained"])
def test_every_bound_above_the_empirical_lipschitz_constant(which, nets):
    model = nets[which]
    x, _ = l2_blobs(8, seed=3)
    an = L2Bounds(model)
    emp_global = empirical_lipschitz(model, x, eps=None)
    assert (emp_global <= an.global_upper).all()
    power = float(global_sigmas(an.chain, iters=500).prod())
    assert (emp_global <= power).all()
    for eps in (0.03, 0.3):
        emp = empirical_lipschitz(model, x, eps=eps)
        for mode in ("estimate", "upper"):
            loc = an.local(x, eps, mode, iters=500).lipschitz
            assert (emp <= loc).all(), f"{mode} local bound below an observed slope at eps={eps}"


def test_local_upper_uses_exact_reduced_dense_norms():
    """Where only dense layers are reduced, the sound local bound equals the exact reduced SVD product."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), ReLUTheta(12, 0.5), nn.Linear(12, 12), ReLUTheta(12, 0.5), nn.Linear(12, 3)).double()
    chain = LipschitzChain.from_model(model, (6,))
    x = torch.rand(5, 6, dtype=torch.float64)
    fwd = chain.forward(x)
    prop = chain.propagate(x, 0.2, fwd, sigmas=global_upper(chain))
    masks = chain.masks(prop.bounds)
    up = local_upper(chain, masks)
    for b in range(5):
        mats = [op.dense() for op in chain.ops()]
        m0 = masks[0][0][b].double()[:, None] * mats[0]
        m1 = masks[1][0][b].double()[:, None] * mats[1] * masks[0][1][b].double()[None, :]
        m2 = mats[2] * masks[1][1][b].double()[None, :]
        exact = torch.stack([torch.linalg.matrix_norm(m, ord=2) for m in (m0, m1, m2)])
        assert (up[b] >= exact).all() and (up[b] <= exact * (1 + 1e-9) + 1e-300).all()


def test_persistent_local_vectors_make_few_iterations_accurate():
    """Huang21 Table 1: with saved vectors, a couple of iterations per epoch track the reduced norms."""
    model = tiny_mcnf("relu_theta", seed=1).double()
    x, _ = l2_blobs(16, seed=4)
    x = x.double()
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    masks = chain.masks(chain.propagate(x, 0.1, fwd, sigmas=global_upper(chain)).bounds)
    with torch.no_grad():
        exact, _ = local_sigmas(chain, masks, iters=400, tol=1e-9)
    store = VectorStore(torch.float16)
    idx = torch.arange(16) * 3
    with torch.no_grad():
        for _ in range(10):  # ten "epochs" of 2 iterations each
            warm, _ = local_sigmas(chain, masks, iters=2, store=store, index=idx)
        cold, _ = local_sigmas(chain, masks, iters=2)
    err_warm = ((exact - warm) / exact.clamp_min(1e-12)).abs()
    err_cold = ((exact - cold) / exact.clamp_min(1e-12)).abs()
    assert float(err_warm.mean()) < 0.3 * float(err_cold.mean())
    assert float(err_warm.mean()) < 2e-2 and float(err_warm.max()) < 0.2
