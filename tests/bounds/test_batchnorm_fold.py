"""Conv2d / Linear + eval-mode BatchNorm in the l2 bounds (folded into the preceding operator;
Fazlyab23 authors' ``Conv2dBatchNorm``): certificates equal those of the same net folded by hand,
attacks at 0.999 x the radius fail, random pairs stay below the bounds, bad BatchNorms are refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lipcert.bounds.layers import BatchNormFold
from lipcert.bounds.liplt import liplt
from lipcert.bounds.ltnet import LTError
from lipcert.certify import CertificationError, certify
from lipcert.models.mcnf import MCNF
from lipcert.nn.common import Flatten, InputNormalize

from ..certify.test_pairwise import l2_attack
from .liplt_helpers import blobs, train_ce

IN = (2, 8, 8)


def bn_net(seed: int = 0) -> MCNF:
    torch.manual_seed(seed)
    layers = [InputNormalize([0.5, 0.5], 0.25),
              nn.Conv2d(2, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
              nn.Conv2d(4, 6, 4, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
              Flatten(), nn.Linear(96, 16), nn.BatchNorm1d(16), nn.ReLU(),
              nn.Linear(16, 4)]
    return MCNF(*layers, in_shape=IN)


def trained():
    x, y = blobs(160, IN, 4, seed=1, spread=0.08)
    model = train_ce(bn_net(), x, y, steps=60)  # train mode: BatchNorm running statistics move
    with torch.no_grad():  # non-trivial affine parameters too
        g = torch.Generator().manual_seed(5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.mul_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval(), x, y


def fold_by_hand(model: MCNF) -> MCNF:
    """The same function without BatchNorm, folded in float64: W' = s W, b' = s (b - mean) + beta."""
    out: list[nn.Module] = []
    kids = list(copy.deepcopy(model).double().children())
    for k, m in enumerate(kids):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            lin = out[-1]
            s = m.weight / torch.sqrt(m.running_var + m.eps)
            b = lin.bias if lin.bias is not None else torch.zeros_like(s)
            new = copy.deepcopy(lin)
            if new.bias is None:
                new.bias = nn.Parameter(torch.zeros_like(s))
            with torch.no_grad():
                new.weight.copy_(lin.weight * s.view(-1, *([1] * (lin.weight.dim() - 1))))
                new.bias.copy_(s * (b - m.running_mean) + m.bias)
            out[-1] = new
        else:
            out.append(m)
    return MCNF(*out, in_shape=IN).double().eval()


MODEL, X, Y = trained()
FOLDED = fold_by_hand(MODEL)


def test_the_hand_fold_is_the_same_function():
    x = X[:20].double()
    torch.testing.assert_close(FOLDED(x), copy.deepcopy(MODEL).double()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bound", ["liplt", "naive", "global", "local-upper", "best"])
def test_radii_equal_the_hand_folded_net(bound):
    a = certify(MODEL, X, Y, bound=bound, eps=[0.1])
    b = certify(FOLDED, X, Y, bound=bound, eps=[0.1])
    assert (a.radius > 0).float().mean() > 0.3, "the test needs certified samples"
    assert torch.equal(a.radius > 0, b.radius > 0)
    assert (a.radius <= b.radius * (1 + 1e-9)).all()  # never larger
    # slightly smaller: the model's float32 forward rounds the conv output before BatchNorm
    # subtracts the running mean (|s| (|b| + |mean|) + |beta| in the walk, not |b'|); 3.7e-4 here
    assert (a.radius >= b.radius * (1 - 1e-3)).all()


def test_liplt_bounds_equal_the_hand_folded_net():
    a, b = liplt(MODEL), liplt(FOLDED)
    torch.testing.assert_close(a.pairwise, b.pairwise, rtol=1e-9, atol=0)
    assert (a.pairwise >= b.pairwise).all()  # the folded matrix's rounding is counted on top


def test_attack_at_0999_radius_never_flips():
    for bound in ("liplt", "best"):
        cert = certify(MODEL, X, Y, bound=bound, eps=[0.1])
        idx = (cert.radius > 0).nonzero().flatten()
        broken = l2_attack(MODEL, X[idx], Y[idx], cert.radius[idx].float() * 0.999)
        assert not broken.any(), f"{bound}: samples {idx[broken].tolist()} certified but broken"
        assert l2_attack(MODEL, X[idx], Y[idx], cert.radius[idx].float() * 10).any()  # not toothless


def test_random_pairs_never_exceed_the_lipschitz_bounds():
    res = liplt(MODEL)
    g = torch.Generator().manual_seed(0)
    m64 = copy.deepcopy(MODEL).double().eval()
    a = torch.rand(2000, *IN, generator=g, dtype=torch.float64)
    b = a + 0.05 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        dz = m64(a) - m64(b)
    dist = (a - b).flatten(1).norm(dim=1)
    full = dz.norm(dim=1) / dist
    assert float(full.max()) <= res.lipschitz
    for i in range(4):
        assert float((dz[:, i].abs() / dist).max()) <= float(res.per_class[i])
        for j in range(4):
            if i != j:
                assert float(((dz[:, i] - dz[:, j]).abs() / dist).max()) <= float(res.pairwise[i, j])


def test_float32_forward_is_within_the_rounding_bound():
    from lipcert.bounds.analysis import L2Bounds

    an = L2Bounds(MODEL)
    x = X[:40]
    fwd, err64 = an.forward(x.double())
    err = err64[-1] + an.float32_error(fwd, err64, torch.zeros(x.shape[0], dtype=torch.float64))
    with torch.no_grad():
        z32 = MODEL(x).double()
    assert ((z32 - fwd.logits).abs() <= err).all()


@pytest.mark.parametrize("value", [-1.0, "-eps", "zero", math.nan, math.inf])
def test_bad_running_var_from_a_file_is_refused(tmp_path, value):
    """Negative (also -eps: var + eps ~ 0, which the float32 forward makes exactly 0), zero with
    eps = 0, NaN, inf: refused by every l2 certificate and by LipLT."""
    path = tmp_path / "bad.pt"
    state = copy.deepcopy(MODEL.state_dict())
    key = next(k for k in state if k.endswith("running_var"))
    eps = next(m for m in MODEL.modules() if isinstance(m, nn.BatchNorm2d)).eps
    state[key][1] = {"-eps": -eps, "zero": 0.0}.get(value, value)
    torch.save(state, path)
    model = bn_net()
    model.load_state_dict(torch.load(path))
    if value == "zero":
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).eps = 0.0
    model.eval()
    with pytest.raises(CertificationError, match="running_var"):
        certify(model, X, Y, bound="liplt")
    with pytest.raises(CertificationError, match="running_var"):
        certify(model, X, Y, bound="best")
    with pytest.raises(LTError, match="running_var"):
        liplt(model)


def test_training_mode_batchnorm_is_refused():
    model = copy.deepcopy(MODEL).train()
    with pytest.raises(CertificationError, match="training mode"):
        certify(model, X, Y, bound="liplt")


def test_batchnorm_placement_and_the_wrapper():
    from lipcert.bounds.network import NetworkError, parse

    net = parse(MODEL)
    assert sum(isinstance(b.main, BatchNormFold) for b in net.blocks) == 3
    bad = MCNF(nn.Conv2d(2, 4, 3, 1, 1), nn.ReLU(), nn.BatchNorm2d(4), Flatten(), nn.Linear(256, 4), in_shape=IN).eval()
    with pytest.raises(NetworkError, match="directly follow"):
        parse(bad)
    last = MCNF(Flatten(), nn.Linear(128, 4), nn.BatchNorm1d(4), in_shape=IN).eval()
    with pytest.raises(NetworkError, match="logits"):
        parse(last)


def test_crm_training_reads_the_batchnorm_net():
    """Training (BatchNorm in train mode): the LipLT estimator folds the running statistics, as the
    authors' power iteration; gradients reach the BatchNorm scale."""
    from lipcert.train import build_objective
    from lipcert.train.objectives import StepContext

    model = copy.deepcopy(MODEL).train()
    obj = build_objective({"name": "crm", "warmup_epochs": 0, "lam": 1.0, "power_iters": 3})
    out = obj(model, X[:16], Y[:16], StepContext({}, torch.arange(16), 1.0))
    out.loss.backward()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
