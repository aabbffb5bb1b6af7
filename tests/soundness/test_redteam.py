"""Red team: certificates of edited checkpoints (a zoo of mutated tensors) are either refused or
survive a strong attack at 0.999 x the certified radius; same-function edits keep the certificate.

The mutations are what a third party could ship in a file: a state dict bypasses every
constructor check (std > 0, thresholds' signs, ...). See ``zoo.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from lipcert import certify
from lipcert.certify import CertificationError

from . import zoo
from .attack import broken, broken_strong

N_TEST = 80
#: set by the slow test below: APGD on every case, not only on the issue's edited checkpoints
STRONG_EVERYWHERE = False
#: the edited checkpoints of the bug report (sign flips of digits-linf, -ensemble, -conv; std negated)
STRONG_CASES = {("mlp", "flip_sign"), ("ensemble", "flip_sign"), ("voting", "flip_sign"), ("conv", "flip_sign"),
                ("ensemble", "flip_sign_one_member"),
                ("mlp", "negate_std"), ("ensemble", "negate_std"), ("conv", "negate_std")}
LINF_METHODS = {"mlp": ["margin", "interval", "best"], "conv": ["margin", "best"], "lse": ["margin", "best"],
                "ensemble": [None, "margin"], "voting": [None, "margin"], "hybrid": [None, "lipschitz", "interval"]}
L2_BOUNDS = ["global", "local-upper", "naive", "liplt", "best", "bcp"]


def _test_data():
    x, y = zoo.data.load("digits", "test")
    return x[:N_TEST], y[:N_TEST]


def _certify(model, kind: str, method):
    x, y = _test_data()
    if kind.startswith("l2"):
        return certify.certify(model, x, y, bound=method, eps=[0.25], norm="l2")
    return certify.certify(model, x, y, method=method)


def _assert_survives(model, cert, norm: str, factor: float = 0.999, strong: bool = False) -> int:
    """No certified sample broken at ``factor`` x its radius: per-sample PGD with restarts, plus
    (``strong``) lipcert's APGD-CE and APGD-T; the slow run (``-m slow``) uses APGD everywhere."""
    x, y = _test_data()
    ok = cert.radius > 0
    if not ok.any():
        return 0
    idx = ok.nonzero()[:, 0]
    attack = broken_strong if strong or STRONG_EVERYWHERE else broken
    hit = attack(model, x[idx], y[idx], cert.radius[idx].float() * factor, norm=norm, steps=30, restarts=2)
    assert not hit.any(), (
        f"{int(hit.sum())} of {idx.numel()} certified samples broken at {factor} x radius "
        f"(radii {cert.radius[idx][hit][:5].tolist()})"
    )
    return idx.numel()


LINF_CASES = [(k, m) for k, ms in LINF_METHODS.items() for m in ms]
L2_CASES = [(k, b) for k in zoo.L2_KINDS for b in L2_BOUNDS if k != "l2_res" or b in ("naive", "liplt", "best")]


def _norm(kind: str) -> str:
    return "l2" if kind.startswith("l2") else "linf"


SAME_FUNCTION_CASES = [(k, m, "flip_sign") for k, m in LINF_CASES + L2_CASES] + [
    (k, m, "flip_sign_one_member") for k, m in LINF_CASES if k in ("ensemble", "voting")]


@pytest.mark.parametrize("kind,method,mutation", SAME_FUNCTION_CASES)
def test_same_function_edit_keeps_the_certificate(kind, method, mutation):
    """Negating std and the first layer's weights keeps every logit; the certificate must not
    change either (before the fix the interval certificate read the flipped box the wrong way
    round and certified up to 2x more, and PGD broke the extra samples)."""
    x, _ = _test_data()
    original = zoo.base(kind)
    edited = zoo.SAME_FUNCTION[mutation](zoo.base(kind))
    with torch.no_grad():
        torch.testing.assert_close(edited(x), original(x), rtol=1e-5, atol=1e-5)
    before, after = _certify(original, kind, method), _certify(edited, kind, method)
    torch.testing.assert_close(after.radius, before.radius, rtol=1e-5, atol=1e-7)
    _assert_survives(edited, after, _norm(kind), strong=(kind, mutation) in STRONG_CASES)


EDITED_CASES = ([("mlp", "margin"), ("mlp", "interval")] + [(k, ms[0]) for k, ms in LINF_METHODS.items()]
                + [(k, "best") for k in zoo.L2_KINDS] + [("l2_relu", "global"), ("l2_res", "liplt"), ("l2_relu", "bcp"),
                                                               ("l2_maxmin", "bcp")])


@pytest.mark.parametrize("kind,method", EDITED_CASES)
@pytest.mark.parametrize("mutation", sorted(zoo.CHANGED))
def test_edited_function_is_refused_or_survives(kind, method, mutation):
    """Edits that change the function: every certificate is about the edited tensors."""
    model = zoo.CHANGED[mutation](zoo.base(kind))
    try:
        cert = _certify(model, kind, method)
    except CertificationError:
        return  # refused with a clear error: allowed
    assert torch.isfinite(cert.radius).all() and (cert.radius >= 0).all()
    _assert_survives(model, cert, _norm(kind), strong=(kind, mutation) in STRONG_CASES)


@pytest.mark.parametrize("mutation", ["none", "huge_weights", "tied_rows"])
@pytest.mark.parametrize("bound", ["global", "liplt", "best"])
def test_plain_torch_model_is_refused_or_survives(mutation, bound):
    """An ordinary nn.Sequential certified in l2 (``norm="l2"``), as shipped and edited."""
    model = zoo.base("l2_plain")
    if mutation != "none":
        model = zoo.CHANGED[mutation](model)
    try:
        cert = _certify(model, "l2_plain", bound)
    except CertificationError:
        assert mutation != "none"
        return
    if mutation == "none":
        assert (cert.radius > 0).sum() >= 10
    _assert_survives(model, cert, "l2")


@pytest.mark.parametrize("kind", ["l2_relu", "l2_maxmin"])
@pytest.mark.parametrize("bound", ["global", "local-upper", "best", "bcp"])
def test_l2_thresholds_outside_their_constraint_set(kind, bound):
    """theta < 0 and clipped-MaxMin a < b never occur in training (projected) but can in a file."""
    model = zoo.l2_negative_thresholds(zoo.base(kind))
    cert = _certify(model, kind, bound)
    _assert_survives(model, cert, "l2")


@pytest.mark.parametrize("bound", ["global", "local-upper", "best"])
def test_per_layer_thresholds_from_a_file(bound, tmp_path):
    """Huang21 code options (per-layer clipped-MaxMin thresholds, its conv init, raw inputs): sound as
    trained, and with arbitrary thresholds written to a checkpoint and read back."""
    from lipcert import checkpoint

    model = zoo.base("l2_maxmin_code")
    cert = _certify(model, "l2_maxmin_code", bound)
    assert (cert.radius > 0).sum() >= 10
    _assert_survives(model, cert, "l2")
    checkpoint.save_atomic(checkpoint.model_payload(zoo.l2_random_thresholds(model), kind="model"), tmp_path / "m.pt")
    loaded = checkpoint.load_model(tmp_path / "m.pt")
    assert any(bool((m.upper < m.lower).any()) for m in loaded.modules() if hasattr(m, "upper"))
    cert = _certify(loaded, "l2_maxmin_code", bound)
    assert (cert.radius > 0).sum() >= 10
    _assert_survives(loaded, cert, "l2")


@pytest.mark.parametrize("kind,method", [("mlp", "margin"), ("ensemble", None)])
def test_the_attack_breaks_tight_certificates_just_above_the_radius(kind, method):
    """The margin certificate of an l-inf-dist net is nearly tight: the attack used above breaks
    many certified samples at 1.5 x their radius (so 'nothing broken at 0.999 x' means something)."""
    model = zoo.base(kind)
    cert = _certify(model, kind, method)
    x, y = _test_data()
    idx = (cert.radius > 0).nonzero()[:, 0]
    assert idx.numel() >= 10, "the zoo model certifies too few samples to test anything"
    hit = broken(model, x[idx], y[idx], cert.radius[idx].float() * 1.5, norm="linf", steps=40, restarts=3)
    assert hit.double().mean() > 0.3


@pytest.mark.parametrize("kind", ["hybrid", "l2_relu", "l2_res"])
def test_the_attack_is_at_least_as_strong_as_long_pgd(kind):
    """Where certificates are loose the 1.5 x check says nothing; there the attack must find at
    least what 100-step PGD with restarts finds at a radius where many samples break."""
    from lipcert.attacks import pgd

    model = zoo.base(kind)
    x, y = _test_data()
    norm = _norm(kind)
    eps = 0.15 if norm == "linf" else 1.5
    ref = pgd(model, x, y, eps, norm=norm, steps=100, restarts=2)
    hit = broken(model, x, y, torch.full((x.shape[0],), eps), norm=norm, steps=40, restarts=3)
    assert (~ref.robust).double().mean() > 0.3
    assert int(hit.sum()) >= int((~ref.robust).sum())


# --------------------------------------------------------------------------- refused tensors
def _first_norm(model):
    return next(m for m in model.modules() if isinstance(m, zoo.InputNormalize))


@pytest.mark.parametrize("kind", ["mlp", "ensemble", "voting", "hybrid", "l2_relu", "l2_res"])
@pytest.mark.parametrize("edit", ["zero_std", "nan_mean", "inf_std", "nan_running_mean"])
def test_non_lipschitz_tensors_are_refused(kind, edit):
    model = zoo.base(kind)
    with torch.no_grad():
        if edit == "zero_std":
            _first_norm(model).std.zero_()
        elif edit == "nan_mean":
            _first_norm(model).mean.fill_(math.nan)
        elif edit == "inf_std":
            _first_norm(model).std.fill_(math.inf)
        else:
            shifts = [b for n, b in model.named_buffers() if n.endswith("running_mean")]
            if not shifts:
                pytest.skip("no mean-shift layers")
            shifts[0][0] = math.nan
    with pytest.raises(CertificationError, match=r"std|mean|NaN"):
        _certify(model, kind, "best" if kind in ("mlp", "ensemble", "l2_relu", "l2_res") else None)


@pytest.mark.parametrize("kind,method", [("mlp", "best"), ("conv", "best"), ("hybrid", None), ("ensemble", "best"),
                                         ("voting", None)])
def test_train_mode_model_is_certified_as_evaluated(kind, method):
    """A model handed over in train mode (mean-shift would use batch statistics) is certified as
    the eval-mode function, which is the one inference uses; the attack runs on that function."""
    evaluated = _certify(zoo.base(kind), kind, method)
    model = zoo.base(kind).train()
    cert = _certify(model, kind, method)
    torch.testing.assert_close(cert.radius, evaluated.radius, rtol=1e-6, atol=1e-9)
    _assert_survives(model.eval(), cert, "linf")


def test_ensemble_with_one_non_finite_member_is_refused():
    model = zoo.base("ensemble")
    with torch.no_grad():
        next(model.members[1].parameters()).view(-1)[0] = math.nan
    with pytest.raises(CertificationError, match="NaN"):
        _certify(model, "ensemble", "best")


# --------------------------------------------------------------------------- exact answers in 2-D
def _toy_2d(flip: bool):
    from lipcert.models.linf import LinfDistNet
    from lipcert.nn import Flatten, LinfDistLinear, MeanShiftNorm, Negate

    torch.manual_seed(3)
    layers = [zoo.InputNormalize([0.5, 0.5], [0.3, 0.2]), Flatten(), LinfDistLinear(2, 12), MeanShiftNorm(12),
              LinfDistLinear(12, 3, bias=True), Negate()]
    net = LinfDistNet(*layers).eval()
    with torch.no_grad():
        layers[2].weight.uniform_(-3, 3)
        layers[3].running_mean.uniform_(0, 2)
        layers[4].weight.uniform_(0, 3)
        if flip:
            layers[0].std.neg_()
            layers[2].weight.neg_()
    return net


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("method", ["margin", "interval", "best"])
def test_2d_certificate_below_the_exact_radius(flip, method):
    """On a 2-input net the exact l-inf robust radius is found on a dense grid: the certified
    radius never exceeds the distance to the nearest grid point of another class."""
    net = _toy_2d(flip)
    n = 241
    g = torch.linspace(0, 1, n)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2, 1, 1)
    with torch.no_grad():
        labels = net(grid).argmax(1)
    pts = torch.rand(40, 2, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    with torch.no_grad():
        y = net(pts).argmax(1)
    cert = certify.certify(net, pts, y, method=method)
    assert (cert.radius > 0).any()
    for i in range(pts.shape[0]):
        other = labels != y[i]
        if other.any():
            nearest = (grid[other] - pts[i]).flatten(1).abs().amax(1).min()
            assert float(cert.radius[i]) <= float(nearest), (i, float(cert.radius[i]), float(nearest))
    if flip:  # same function as the unflipped net: same radii
        torch.testing.assert_close(cert.radius, certify.certify(_toy_2d(False), pts, y, method=method).radius, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- rounding slack
@pytest.mark.parametrize("kind", ["l2_relu", "l2_res"])
def test_l2_rounding_bound_is_sign_invariant(kind):
    """The elementwise rounding bound of the pairwise certificate divides by |std|: with a stored
    negative std it must stay >= 0 and equal the unflipped model's (the slack is far below what an
    attack can see, so this is checked directly)."""
    import copy

    from lipcert.bounds.ltnet import LTNet
    from lipcert.certify.pairwise import forward_with_error

    x, _ = _test_data()
    errs = []
    for model in (zoo.base(kind), zoo.flip_sign_same_function(zoo.base(kind))):
        m64 = copy.deepcopy(model).double().eval()
        _, err = forward_with_error(LTNet.from_model(m64), m64, x)
        errs.append(err)
    assert (errs[1] >= 0).all()
    torch.testing.assert_close(errs[1], errs[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_linf_rounding_slack_is_sign_invariant(kind):
    x, y = _test_data()
    a = certify.certify(zoo.base(kind), x, y, method="margin").extra["rounding_slack"]
    b = certify.certify(zoo.flip_sign_same_function(zoo.base(kind)), x, y, method="margin").extra["rounding_slack"]
    assert (b >= 0).all()
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan, math.inf])
@pytest.mark.parametrize("method", ["margin", "best"])
def test_a_layer_stating_a_meaningless_lipschitz_constant_is_refused(value, method):
    """Certificates divide by products of the layers' stated constants: a layer (e.g. a user's own)
    that states a negative, zero, NaN or infinite constant must be refused, not trusted."""
    from lipcert.nn import Negate

    class Stated(Negate):
        def linf_lipschitz(self) -> float:
            return value

    model = zoo.base("mlp")
    model.append(Stated())
    model.append(Negate())
    with pytest.raises(CertificationError, match="Lipschitz constant"):
        _certify(model, "mlp", method)


@pytest.mark.slow
def test_every_case_survives_apgd():
    """The whole zoo again with APGD-CE and APGD-T on every case (minutes): ``pytest -m slow``."""
    global STRONG_EVERYWHERE
    STRONG_EVERYWHERE = True
    try:
        for kind, method, mutation in SAME_FUNCTION_CASES:
            test_same_function_edit_keeps_the_certificate(kind, method, mutation)
        for kind, method in EDITED_CASES:
            for mutation in sorted(zoo.CHANGED):
                test_edited_function_is_refused_or_survives(kind, method, mutation)
    finally:
        STRONG_EVERYWHERE = False
