"""Training-only fast path of the local bound (lipcert.bounds.fast_local) against the reference path.

Slack: the two paths compute the same quantities with different summation orders (and eps instead
of ((x + eps) - (x - eps)) / 2), so float32 results agree to a few ulps per operation; loss and
gradients are compared with a relative tolerance of 1e-4, bounds in float64 to 1e-10.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lipcert.bounds import LipschitzChain, VectorStore, global_sigmas, local_sigmas, local_upper
from lipcert.bounds.fast_local import local_sigmas_fast, propagate_fast, training_ops
from lipcert.train.objectives import StepContext
from lipcert.train.objectives_l2 import LipschitzObjective

from .nets import ball_points, l2_blobs, tiny_mcnf, train_l2_briefly
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

ACTS = ["relu_theta", "relu", "maxmin"]


def _nets():
    x, y = l2_blobs(64)
    trained = train_l2_briefly(tiny_mcnf("relu_theta", seed=3).train(), x, y, steps=12)
    dead = tiny_mcnf("relu_theta", seed=4)
    with torch.no_grad():  # thresholds at 0 (as projected after a step) take the reference box rule
        dead[2].theta[0].zero_()
    return {**{a: tiny_mcnf(a, seed=1) for a in ACTS}, "6c2f": tiny_mcnf("relu_theta", seed=2, arch="6c2f"),
            "trained": trained, "theta0": dead}


NETS = _nets()


@pytest.mark.parametrize("name", list(NETS))
def test_propagation_and_masks_match_the_reference(name):
    model = copy.deepcopy(NETS[name]).double()
    x, _ = l2_blobs(24, seed=5)
    x = x.double()
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    sig = global_sigmas(chain, iters=3, generator=torch.Generator().manual_seed(0))
    for eps in (0.05, 0.4):
        ref = chain.propagate(x, eps, fwd, sigmas=sig, ball=True)
        got, masks = propagate_fast(chain, x, eps, fwd, sig, training_ops(chain))
        for (a, b), (c, d) in zip(got.bounds + [got.last_box], ref.bounds + [ref.last_box]):
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(b, d, rtol=1e-10, atol=1e-10)
        for (im, om), (rim, rom) in zip(masks, chain.masks(ref.bounds)):
            assert torch.equal(im.bool(), rim) and torch.equal(om.bool(), rom)


@pytest.mark.parametrize("name", ["relu_theta", "maxmin", "trained"])
def test_local_sigmas_match_the_reference_with_and_without_stored_vectors(name):
    model = copy.deepcopy(NETS[name])
    x, _ = l2_blobs(16, seed=6)
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    sig = global_sigmas(chain, iters=3, generator=torch.Generator().manual_seed(0))
    prop, masks = propagate_fast(chain, x, 0.3, fwd, sig, training_ops(chain))
    ref_masks = chain.masks(prop.bounds)
    a = local_sigmas_fast(chain, masks, training_ops(chain), 3, generator=torch.Generator().manual_seed(1))
    b, _ = local_sigmas(chain, ref_masks, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    idx = torch.arange(16)
    s1, s2 = VectorStore(), VectorStore()
    for _ in range(2):  # the second call starts from the stored vectors
        a = local_sigmas_fast(chain, masks, training_ops(chain), 2, s1, idx, generator=torch.Generator().manual_seed(2))
        b, _ = local_sigmas(chain, ref_masks, 2, s2, idx, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for key in s2.keys():
        torch.testing.assert_close(s1.get(key, idx, s2._buf(key).shape[1:]), s2.get(key, idx, s2._buf(key).shape[1:]), rtol=0, atol=2e-3)


CONFIGS = [("gloro", "local", 0.0), ("bcp", "local", 0.0), ("gloro", "local", 0.01), ("bcp", "global", 0.0), ("lmt", "local", 0.0)]


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("loss,bound,sparsity", CONFIGS)
def test_objective_loss_and_gradients_match_the_reference(name, loss, bound, sparsity):
    if sparsity and name in ("maxmin", "relu"):
        pytest.skip("the sparsity loss needs thresholds")
    model = copy.deepcopy(NETS[name]).train()
    x, y = l2_blobs(32, seed=7)
    ctx = StepContext({"eps": 0.3, "lam": 0.7}, torch.arange(32), 1.0)
    results = []
    for fast in (False, True):
        obj = LipschitzObjective(loss, bound=bound, power_iters=2, sparsity=sparsity, lam_theta=0.1, fast=fast)
        for step in range(2):  # the second step starts from the stored vectors
            torch.manual_seed(step)
            model.zero_grad(set_to_none=True)
            out = obj(model, x, y, ctx)
            out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()], out.metrics))
    (l0, g0, m0), (l1, g1, m1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-6)
    for a, b in zip(g1, g0):
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-6
    for k in ("lip_global", "lip_local_mean", "varying"):
        if k in m0:
            assert m1[k] == pytest.approx(m0[k], rel=1e-4, abs=1e-6)


def test_fast_local_bound_is_above_empirical_ratios_and_below_the_rigorous_bound():
    """Converged, the fast path's local bound is >= ||f(a) - f(b)|| / ||a - b|| for random pairs in
    the ball, and <= the rigorous local bound (exact reduced norms of the dense layers)."""
    model = copy.deepcopy(NETS["trained"]).double()
    x, _ = l2_blobs(8, seed=8)
    x = x.double()
    eps = 0.1
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    with torch.no_grad():
        sig = global_sigmas(chain, iters=300, tol=1e-12, generator=torch.Generator().manual_seed(0))
        upper_g = torch.tensor([op.norm_upper() for op in chain.ops()], dtype=torch.float64)
        # masks from sound per-layer bounds (the ball radii use the rigorous global norms)
        prop, masks = propagate_fast(chain, x, eps, fwd, upper_g, training_ops(chain))
        lip = local_sigmas_fast(chain, masks, training_ops(chain), 400, generator=torch.Generator().manual_seed(1)).prod(1)
        up = local_upper(chain, chain.masks(prop.bounds)).prod(1)
        assert (lip <= up * (1 + 1e-6)).all()
        pts = ball_points(x, eps, 24, torch.Generator().manual_seed(2))  # (k, n, ...)
        out = torch.stack([model(p) for p in pts])
        k = pts.shape[0]
        for i in range(k):
            for j in range(i + 1, k):
                ratio = (out[i] - out[j]).norm(dim=1) / (pts[i] - pts[j]).flatten(1).norm(dim=1)
                assert (ratio <= lip * (1 + 1e-6)).all()
    assert sig.prod() >= lip.max() * (1 - 1e-6)  # local <= global (Huang21 Thm 1)
