"""Contracts every registered model keeps (timm's tests/test_models.py pattern).

For every name in ``lipcert.models.available()`` (enumerated, never listed here), at the small size
of its ``MODEL_BANK`` entry:

* it builds, maps a batch to finite logits, and rebuilds from its ``lipcert_spec`` + state dict;
* one optimiser step of its family's loss changes its function and keeps every parameter finite;
* after a brief fit on a separable set, its default certificate (``lipcert.certify.certify``)
  certifies some samples, and a strong white-box attack (per-sample PGD with restarts and the
  gradient's corners, then lipcert's APGD-CE / APGD-T) at 0.999 x each certified radius, in the
  certificate's norm, never changes a prediction; the same for every alternative method;
* for l2 models, every operator the l2 bounds read (LipLT atoms, chain operators) has a
  ``norm_upper()`` no smaller than a power-iteration estimate of its norm.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from lipcert import certify, models
from lipcert.certify import CERTIFIERS, METHODS

from ..soundness.attack import broken_strong
from .bank import FAMILY_LOSS, MODEL_BANK, ModelCase, bands

NAMES = models.available()


def _case(name: str) -> ModelCase:
    if name not in MODEL_BANK:
        pytest.fail(f"model {name!r} is registered but has no entry in tests/contracts/bank.py MODEL_BANK")
    return MODEL_BANK[name]


def test_every_registered_model_has_a_bank_entry():
    missing = sorted(set(NAMES) - set(MODEL_BANK))
    stale = sorted(set(MODEL_BANK) - set(NAMES))
    assert not missing, f"registered models without a MODEL_BANK entry (add one line each): {missing}"
    assert not stale, f"MODEL_BANK entries for models that are not registered: {stale}"


def test_every_certificate_kind_has_a_loss():
    assert set(CERTIFIERS) <= set(FAMILY_LOSS), f"certificate kinds without a training loss: {sorted(set(CERTIFIERS) - set(FAMILY_LOSS))}"


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name, **_case(name).kwargs)


def _loss(model: nn.Module):
    kind = getattr(model, "certificate", None)
    assert kind in FAMILY_LOSS, f"{type(model).__name__} declares certificate {kind!r}, which has no FAMILY_LOSS entry"
    return FAMILY_LOSS[kind]


def _step(model: nn.Module, opt: torch.optim.Optimizer, x, y) -> torch.Tensor:
    model.train()
    loss = _loss(model)(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if hasattr(model, "project_"):
        model.project_()
    return loss.detach()


@functools.lru_cache(maxsize=None)
def _fitted(name: str) -> nn.Module:
    case = _case(name)
    model = _build(name)
    x, y = bands(case.n_train, case.in_shape, case.num_classes, seed=0)
    if case.setup is not None:
        case.setup(model, x, y)
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    for _ in range(case.steps):
        _step(model, opt, x, y)
    return model.eval()


def fitted(name: str) -> nn.Module:
    return copy.deepcopy(_fitted(name)).eval()


def _test_set(name: str):
    case = _case(name)
    return bands(case.n_test, case.in_shape, case.num_classes, seed=1)


@pytest.mark.parametrize("name", NAMES)
def test_builds_runs_and_rebuilds_from_its_spec(name):
    case = _case(name)
    model = _build(name).eval()
    x, _ = _test_set(name)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], case.num_classes)
    assert torch.isfinite(out).all()
    spec = model.lipcert_spec
    assert spec["name"] == name
    again = models.build(spec["name"], **spec["kwargs"])
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), out)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_changes_the_model_and_keeps_it_finite(name):
    case = _case(name)
    model = _build(name)
    x, y = bands(case.n_train, case.in_shape, case.num_classes, seed=0)
    if case.setup is not None:
        case.setup(model, x, y)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        out_before = model.eval()(x)
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    loss = _step(model, opt, x, y)
    assert torch.isfinite(loss)
    params = dict(model.named_parameters())
    bad = [k for k, p in params.items() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite parameters after one step: {bad}"
    grads = [k for k, p in params.items() if p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0]
    assert grads, "the loss gives no parameter a gradient"
    unmoved = [k for k in grads if torch.equal(params[k].detach(), before[k])]
    assert not unmoved, f"parameters with a gradient that the step did not change: {unmoved}"
    with torch.no_grad():
        out_after = model.eval()(x)
    assert torch.isfinite(out_after).all()
    assert not torch.equal(out_after, out_before), "one optimiser step left the model's function unchanged"


def _assert_sound(model: nn.Module, cert, x, y, what: str, attack: dict, only=None) -> int:
    """No sample with radius > 0 (among ``only``, if given) is broken at 0.999 x its radius."""
    assert cert.radius.shape == (x.shape[0],) and torch.isfinite(cert.radius).all() and (cert.radius >= 0).all()
    with torch.no_grad():
        pred = model(x).argmax(1)
    pos = cert.radius > 0
    # a certified sample is correctly classified by the model as deployed
    assert (pred[pos] == y[pos]).all(), f"{what}: certified samples the model misclassifies"
    idx = (pos if only is None else pos & only).nonzero()[:, 0]
    if idx.numel() == 0:
        return 0
    budget = {"steps": 30, "restarts": 2, **attack}
    hit = broken_strong(model, x[idx], y[idx], cert.radius[idx].float() * 0.999, norm=cert.norm, **budget)
    assert not hit.any(), (
        f"{what}: {int(hit.sum())} of {idx.numel()} certified samples broken at 0.999 x their {cert.norm} radius "
        f"(radii {cert.radius[idx][hit][:5].tolist()})"
    )
    return idx.numel()


@pytest.mark.parametrize("name", NAMES)
def test_default_certificate_survives_a_strong_attack(name):
    case = _case(name)
    model = fitted(name)
    x, y = _test_set(name)
    cert = certify.certify(model, x, y, **case.certify_kwargs)
    assert cert.norm in ("linf", "l2")
    n = _assert_sound(model, cert, x, y, f"{name} default certificate ({cert.method})", case.attack)
    # the test must be able to fail: the fit leaves certified samples to attack
    assert n >= x.shape[0] // 4, f"{name}: only {n} of {x.shape[0]} samples certified; the bank entry needs a better fit"


@pytest.mark.parametrize("name", NAMES)
def test_every_alternative_certificate_survives_a_strong_attack(name):
    case = _case(name)
    model = fitted(name)
    x, y = _test_set(name)
    kind = model.certificate
    options = [m for m in certify.methods(model) if METHODS[kind][m] is not CERTIFIERS[kind]]
    if not options:
        pytest.skip(f"{name}: no alternative certificate methods registered besides the default")
    default = certify.certify(model, x, y, **case.certify_kwargs)
    for method in options:
        cert = certify.certify(model, x, y, method=method, **case.certify_kwargs)
        assert cert.norm == default.norm
        # radii up to the default's were attacked by the test above (a sub-ball of a ball that
        # survived); attack the samples this method certifies further
        beyond = cert.radius > default.radius
        _assert_sound(model, cert, x, y, f"{name} method={method} ({cert.method})", case.attack, only=beyond)


def _power_norm(op, in_shape, iters: int = 60, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(4, *in_shape, generator=g, dtype=torch.float64)
    best = 0.0
    for _ in range(iters):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * len(in_shape))
        w = op.forward(v)
        best = max(best, float(w.flatten(1).norm(dim=1).max()))
        v = op.adjoint(w).reshape(v.shape)
    return best


@pytest.mark.parametrize("name", NAMES)
def test_l2_operator_bounds_dominate_their_norms(name):
    model = fitted(name)
    if getattr(model, "certificate", None) != "l2_lipschitz":
        pytest.skip(f"{name} is certified in l-inf")
    from lipcert.bounds.chain import ChainError, LipschitzChain
    from lipcert.bounds.ltnet import LTNet

    model64 = copy.deepcopy(model).double()
    model64.in_shape = model.in_shape
    checked = 0
    with torch.no_grad():
        net = LTNet.from_model(model64)
        for atom in net.atoms:
            est = _power_norm(atom, atom.in_shape)
            assert est <= atom.norm_upper() * (1 + 1e-9), f"{name} LipLT atom {atom.name}: ||.|| >= {est} > norm_upper {atom.norm_upper()}"
            checked += 1
        try:
            chain = LipschitzChain.from_model(model64)
        except ChainError:
            chain = None
        if chain is not None:
            for i, op in enumerate(chain.ops()):
                est = _power_norm(op, op.in_shape)
                assert est <= op.norm_upper() * (1 + 1e-9), f"{name} chain op {i}: ||.|| >= {est} > norm_upper {op.norm_upper()}"
                checked += 1
    assert checked
