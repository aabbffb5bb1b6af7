"""Power iteration (Huang21 Algorithm 1): batched per-sample estimates, persistent vectors, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipcert.bounds import ConvOp, DenseOp, Masked, VectorStore, power_iteration
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)


def _svd(m):
    return float(torch.linalg.matrix_norm(m.double(), ord=2))


def test_converges_to_svd_and_stays_below():
    torch.manual_seed(0)
    w = torch.randn(30, 20, dtype=torch.float64)
    op = DenseOp(w)
    exact = _svd(w)
    for iters in (1, 3, 10):
        s = float(power_iteration(op, batch=1, iters=iters).sigma)
        assert s <= exact * (1 + 1e-12)
    assert float(power_iteration(op, batch=1, iters=500).sigma) == pytest.approx(exact, rel=1e-7)


def test_batched_masked_matches_per_sample_svd():
    torch.manual_seed(1)
    op = ConvOp(torch.randn(3, 2, 3, 3, dtype=torch.float64), (2, 5, 5), 1, 1)
    m = op.dense()
    im = torch.rand(4, *op.in_shape) < 0.5
    om = torch.rand(4, *op.out_shape) < 0.5
    res = power_iteration(Masked(op, im, om), batch=4, iters=3000, tol=1e-12)
    for b in range(4):
        exact = _svd(om[b].flatten().double()[:, None] * m * im[b].flatten().double()[None, :])
        assert float(res.sigma[b]) <= exact * (1 + 1e-9)
        assert float(res.sigma[b]) >= exact * (1 - 1e-5)
    assert (res.iterations > 0).all() and (res.iterations <= 3000).all()
    assert torch.allclose(res.u.flatten(1).norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_tolerance_stops_early_and_masks_to_zero():
    torch.manual_seed(0)
    w = torch.diag(torch.tensor([5.0, 1.0, 0.5], dtype=torch.float64))
    op = DenseOp(w)
    res = power_iteration(op, batch=2, iters=1000, tol=1e-3)
    assert (res.iterations < 50).all()
    torch.testing.assert_close(res.sigma, torch.full((2,), 5.0, dtype=torch.float64), rtol=1e-5, atol=0)
    dead = power_iteration(Masked(op, torch.zeros(1, 3, dtype=torch.bool), None), batch=1, iters=5)
    assert float(dead.sigma) == 0.0  # a fully masked layer contributes nothing


def test_sigma_gradient_matches_svd_gradient():
    """d sigma / dW = u1 v1^T at convergence: compare autograd through sigma with the float64 SVD."""
    torch.manual_seed(0)
    w = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    res = power_iteration(DenseOp(w), batch=1, iters=2000, tol=1e-14)
    (g,) = torch.autograd.grad(res.sigma.sum(), w)
    u, s, vh = torch.linalg.svd(w.detach())
    torch.testing.assert_close(g, torch.outer(u[:, 0], vh[0]), atol=1e-8, rtol=1e-6)  # sign-invariant
    w2 = w.detach().clone().requires_grad_(True)
    torch.linalg.matrix_norm(w2, ord=2).backward()
    torch.testing.assert_close(g, w2.grad, atol=1e-8, rtol=1e-6)


def test_warm_start_beats_a_random_start():
    torch.manual_seed(0)
    w = torch.randn(40, 40, dtype=torch.float64)
    op = DenseOp(w)
    exact = _svd(w)
    first = power_iteration(op, batch=1, iters=200)
    warm = power_iteration(op, u=first.u, iters=1)
    cold = power_iteration(op, batch=1, iters=1)
    assert abs(float(warm.sigma) - exact) < abs(float(cold.sigma) - exact)
    from_v = power_iteration(op, v=first.v, iters=1)  # starting from the left vector works too
    assert abs(float(from_v.sigma) - exact) < 1e-6 * exact


class _Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.store = VectorStore(torch.float16)


def test_vector_store_grows_and_round_trips_state_dict():
    owner = _Owner()
    st = owner.store
    idx = torch.tensor([3, 7])
    assert st.get("l0", idx, (2, 2)).abs().sum() == 0  # unseen: zeros -> random start
    vec = torch.randn(2, 2, 2)
    st.put("l0", idx, vec)
    torch.testing.assert_close(st.get("l0", idx, (2, 2)), vec.half().float())
    st.put("l0", torch.tensor([40]), torch.ones(1, 2, 2))
    assert st._buffers["vec_l0"].shape[0] >= 41 and st._buffers["vec_l0"].dtype == torch.float16
    torch.testing.assert_close(st.get("l0", idx, (2, 2)), vec.half().float())
    assert st.get("l0", torch.tensor([1000]), (2, 2)).abs().sum() == 0  # beyond the buffer: unseen
    fresh = _Owner()
    fresh.load_state_dict(owner.state_dict())
    torch.testing.assert_close(fresh.store.get("l0", torch.tensor([3, 7, 40]), (2, 2)), st.get("l0", torch.tensor([3, 7, 40]), (2, 2)))
    assert fresh.store.keys() == ["l0"] and fresh.store.nbytes() == st.nbytes()


def test_old_format_state_dicts_still_load():
    """Checkpoints store Huang21's per-sample vectors as ``<owner>.vec_<key>`` (float16 rows by
    dataset index) and LipLT's span vectors as ``vectors.u_<s>_<e>`` (one block per span, in its
    own precision): state dicts written in that format load into today's stores."""
    from lipcert.bounds.liplt import LipLTEstimator
    from lipcert.bounds.span_norms import span_vectors

    rows = torch.randn(5, 3, 2).half()
    owner = _Owner()
    owner.load_state_dict({"store.vec_l1": rows.clone()})
    assert owner.store.keys() == ["l1"]
    torch.testing.assert_close(owner.store.get("l1", torch.tensor([4, 0]), (3, 2)), rows[[4, 0]].float())

    block = torch.randn(1, 6, dtype=torch.float64)
    est = LipLTEstimator()
    est.load_state_dict({"vectors.u_0_1": block.clone(), "vectors.u_1_1": 2 * block})
    assert sorted(est.vectors.keys()) == ["0_1", "1_1"]
    got = est.vectors.get_block("0_1")
    assert got.dtype == torch.float64 and torch.equal(got, block)
    assert set(est.state_dict()) == {"vectors.u_0_1", "vectors.u_1_1"}  # and saves in that format
    spans = span_vectors()
    spans.put_block("0_0", block)
    assert list(spans.state_dict()) == ["u_0_0"] and torch.equal(spans.state_dict()["u_0_0"], block)


def test_power_iteration_on_a_composed_chain_of_layers():
    """||W2 W1|| of a conv followed by a dense layer (what LipLT-style products need), per sample
    with masks in between, against the SVD of the materialised product."""
    from lipcert.bounds import Composed

    torch.manual_seed(0)
    conv = ConvOp(torch.randn(3, 2, 3, 3, dtype=torch.float64), (2, 5, 5), 2, 1)
    dense = DenseOp(torch.randn(4, conv.out_numel, dtype=torch.float64), conv.out_shape)
    prod = dense.dense() @ conv.dense()
    res = power_iteration(Composed([conv, dense]), batch=1, iters=3000, tol=1e-13)
    assert float(res.sigma) == pytest.approx(_svd(prod), rel=1e-7)
    mask = torch.rand(3, *conv.out_shape) < 0.5
    chain = Composed([Masked(conv, None, mask), dense])
    res = power_iteration(chain, batch=3, iters=3000, tol=1e-13)
    for b in range(3):
        exact = _svd(dense.dense() @ (mask[b].flatten().double()[:, None] * conv.dense()))
        assert float(res.sigma[b]) == pytest.approx(exact, rel=1e-6)
