"""The chain view of a network: forward, box / ball propagation (Huang21 Eq. 21-23), masks, rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipcert.bounds import ChainError, LipschitzChain, global_upper
from lipcert.nn.common import InputNormalize

from .nets import IN_SHAPE, ball_points, l2_blobs, tiny_mcnf
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

ACTS = ["relu", "relu_theta", "maxmin", "clipped_maxmin"]


@pytest.mark.parametrize("act", ACTS)
def test_forward_is_the_models_forward(act):
    model = tiny_mcnf(act)
    x, _ = l2_blobs(8)
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    torch.testing.assert_close(fwd.logits, model(x))
    assert len(fwd.pre) == 7 and len(fwd.post) == 6 and chain.depth == 7
    assert [op.in_shape for op in chain.ops()][:2] == [IN_SHAPE, (4, 8, 8)]
    weight, bias = chain.last_affine()
    torch.testing.assert_close(fwd.post[-1].flatten(1) @ weight.T + bias, fwd.logits)


def _pre_activations(chain, pts):
    return [torch.stack([chain.forward(p).pre[l] for p in pts]) for l in range(chain.depth - 1)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("sound", [False, True])
def test_bounds_contain_every_reachable_pre_activation(act, sound):
    model = tiny_mcnf(act).double()
    x, _ = l2_blobs(6)
    x = x.double()
    eps = 0.15
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    ups = global_upper(chain)
    err = chain.forward_error(fwd, layer_norms=ups) if sound else None
    prop = chain.propagate(x, eps, fwd, sigmas=ups, ball=True, sound=sound, fwd_error=err)
    with torch.no_grad():
        pre = _pre_activations(chain, ball_points(x, eps, 16))
    for (lo, hi), z in zip(prop.bounds, pre):
        assert (z >= lo).all() and (z <= hi).all()
    # ascent on a few neurons of the last hidden layer: the attack must not exceed the bound either
    lo, hi = prop.bounds[-1]
    xa = x.clone().requires_grad_(True)
    for _ in range(12):
        z = chain.forward(xa).pre[-2]
        (g,) = torch.autograd.grad(z[:, :5].sum(), xa)
        with torch.no_grad():
            xa += 0.04 * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            d = xa - x
            xa.copy_(x + d * torch.clamp(eps / d.flatten(1).norm(dim=1).clamp_min(1e-12), max=1).view(-1, 1, 1, 1))
    with torch.no_grad():
        assert (chain.forward(xa).pre[-2][:, :5] <= hi[:, :5]).all()


def test_ball_and_box_each_tighten_and_sound_is_wider():
    model = tiny_mcnf("relu_theta").double().requires_grad_(False)
    x, _ = l2_blobs(6)
    x = x.double()
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    ups = global_upper(chain)
    box = chain.propagate(x, 0.2, fwd, sigmas=None)
    both = chain.propagate(x, 0.2, fwd, sigmas=ups)
    sound = chain.propagate(x, 0.2, fwd, sigmas=ups, sound=True, fwd_error=chain.forward_error(fwd, layer_norms=ups))
    widths = []
    for (bl, bh), (l2, h2), (sl, sh) in zip(box.bounds, both.bounds, sound.bounds):
        assert (l2 >= bl).all() and (h2 <= bh).all()
        assert (sl <= l2).all() and (sh >= h2).all()
        widths.append(float((bh - bl).mean() - (h2 - l2).mean()))
    assert max(widths) > 0  # the ball actually cuts the box somewhere
    # layer 1: the ball bound is exact per neuron (z_i +- eps ||W_i||), never worse than the box
    lo, hi = both.bounds[0]
    assert ((hi - lo) <= (box.bounds[0][1] - box.bounds[0][0]) + 1e-12).all()


@pytest.mark.parametrize("act", ACTS)
def test_masks_flag_every_changing_activation(act):
    model = tiny_mcnf(act, theta=0.3).double()
    x, _ = l2_blobs(6)
    x = x.double()
    chain = LipschitzChain.from_model(model)
    fwd = chain.forward(x)
    prop = chain.propagate(x, 0.1, fwd, sigmas=global_upper(chain))
    masks = chain.masks(prop.bounds)
    with torch.no_grad():
        posts = [torch.stack([chain.forward(p).post[l] for p in ball_points(x, 0.1, 16)]) for l in range(6)]
    fixed = 0
    for (in_m, out_m), post in zip(masks, posts):
        spread = post.amax(0) - post.amin(0)
        assert (spread[~out_m] == 0).all()
        fixed += int((~out_m).sum())
    if act != "maxmin":  # plain MaxMin has no constant region
        assert fixed > 0  # the test has something to check


def test_forward_error_bounds_float32_inference():
    model = tiny_mcnf("relu_theta", width=0.25).requires_grad_(False)
    x, _ = l2_blobs(16)
    chain64 = LipschitzChain.from_model(model.double())
    fwd = chain64.forward(x.double())
    ups = global_upper(chain64)
    from lipcert.bounds.chain import U32

    err64 = chain64.forward_error(fwd, layer_norms=ups)[-1]
    err32 = chain64.forward_error(fwd, U32, layer_norms=ups)[-1]
    y32 = model.float()(x)
    gap = (y32.double() - fwd.logits).abs()
    assert (gap <= err32 + err64).all()
    assert float(err32.max()) < 1e-2 * float(fwd.logits.abs().max()) + 1e-3  # rigorous, not absurd
    assert float(err64.max()) < 1e-9


def test_chain_refuses_unsupported_models():
    with pytest.raises(ChainError, match="Tanh"):
        LipschitzChain.from_model(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)), (3,))
    with pytest.raises(ChainError, match="end with a Linear"):
        LipschitzChain.from_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))
    with pytest.raises(ChainError, match="input shape"):
        LipschitzChain.from_model(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ChainError, match="first layer"):
        LipschitzChain.from_model(nn.Sequential(nn.Linear(3, 3), InputNormalize([0.0], 1.0), nn.Linear(3, 3)), (3,))
    with pytest.raises(ChainError, match="dilation"):
        LipschitzChain.from_model(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2), nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6))
    chain = LipschitzChain.from_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (3,))
    assert chain.depth == 2


def test_chain_refuses_layers_without_activation_in_between():
    """Regression: Linear, Linear (no activation) crashed in ``propagate`` / ``forward_error``, and
    with matching shapes ``forward_error`` silently skipped the middle layer's rounding error."""
    for mid in (6, 5):
        model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, mid), nn.Linear(mid, 3))
        with pytest.raises(ChainError, match="without an activation"):
            LipschitzChain.from_model(model, (4,))
