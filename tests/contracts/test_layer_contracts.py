"""Contracts every layer class of :mod:`lipcert.nn` keeps.

The classes are enumerated (every public ``nn.Module`` subclass defined in a ``lipcert.nn``
module); each needs an entry in ``bank.LAYER_BANK``. What a layer is checked against is what it
declares, not what the bank says:

* ``linf_lipschitz()``: ``||f(a) - f(b)||_inf <= L ||a - b||_inf`` on random pairs, far pairs and
  pairs found by normalised-gradient ascent of the ratio (PGD on ``||f(a + d) - f(a)||`` over the
  sphere ``||d|| = step``), so a constant that is too small is caught, not only a wrong one;
* l2 bounds (``LayerCase.l2_constants``: Fazlyab23 Prop. 3.1's sqrt(rho), LipLT's per-stage bound, the
  head's matrix norm; ``norm_upper()`` of the operators the l2 bounds read): the same in l2;
* activations: ``lipschitz`` in l2, the slope bounds LipLT uses (``slope_bounds``: ``phi - c I`` is
  d-Lipschitz; elementwise difference quotients within [alpha, beta] for elementwise ones), the
  interval rule ``box``, the masks ``varying`` and ``error_rule``;
* ``interval_bounds``: the outputs of every input in the box lie inside;
* ``rounding_error`` / ``error_bound``: a float32 evaluation differs from float64 by at most the
  stated float32 + float64 bounds;
* ``liplt_parts``: the parts describe ``forward``.

Random draws come from ``hypothesis`` (seed, input scale, step size; derandomised, so runs are
reproducible, with few examples per case to keep the suite fast).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import pkgutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import lipcert.nn
from lipcert.nn import current_p

from .bank import LAYER_BANK, OPERATOR_BANK, LayerCase

U32, U64 = 2.0**-24, 2.0**-53
RTOL = 1e-6  # the brief's tolerance on a ratio against its bound (float64 evaluation)

FAST = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SEEDS = st.integers(0, 2**31 - 1)
SCALES = st.sampled_from([0.05, 0.5, 1.0, 3.0, 20.0])
STEPS = st.floats(-3.0, 0.5).map(lambda e: 10.0**e)


def layer_classes() -> set[type]:
    """Every public nn.Module subclass defined in a module of the lipcert.nn package."""
    found = set()
    modules = [lipcert.nn] + [importlib.import_module(i.name) for i in pkgutil.walk_packages(lipcert.nn.__path__, "lipcert.nn.")]
    for mod in modules:
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__.startswith("lipcert.nn") and not name.startswith("_"):
                found.add(obj)
    return found


def test_every_layer_class_has_a_bank_entry():
    classes = layer_classes()
    assert classes, "found no layer classes in lipcert.nn"
    missing = sorted(c.__qualname__ for c in classes - set(LAYER_BANK))
    assert not missing, f"lipcert.nn classes without a LAYER_BANK entry in tests/contracts/bank.py: {missing}"
    stale = sorted(c.__qualname__ for c in set(LAYER_BANK) - classes)
    assert not stale, f"LAYER_BANK entries for classes lipcert.nn does not define: {stale}"
    for cls, entry in LAYER_BANK.items():
        if isinstance(entry, str):
            continue
        assert entry, f"{cls.__qualname__}: empty case list"
        for case in entry:
            layer = case.make(torch.Generator().manual_seed(0))
            assert type(layer) is cls, f"case {case.id} builds a {type(layer).__name__}, not a {cls.__qualname__}"


CASES: list[LayerCase] = [c for entry in LAYER_BANK.values() if not isinstance(entry, str) for c in entry]


def _probe(case: LayerCase) -> nn.Module:
    return case.make(torch.Generator().manual_seed(0))


def _cases(pred) -> list:
    return [pytest.param(c, id=c.id) for c in CASES if pred(_probe(c))]


def _is_activation(layer) -> bool:
    from lipcert.nn.activations import Activation

    return isinstance(layer, Activation)


def test_every_layer_states_a_lipschitz_fact():
    """A layer the certificates may meet states a constant: l-inf, l2 (bank), or as an activation."""
    for case in CASES:
        layer = _probe(case)
        assert hasattr(layer, "linf_lipschitz") or case.l2_constants is not None or _is_activation(layer), (
            f"{case.id}: {type(layer).__name__} states no Lipschitz constant and its bank entry names no l2 bound")


# ------------------------------------------------------------------------------- helpers
def _norm(t: Tensor, norm: str) -> Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _direction(g: torch.Generator, shape, norm: str, step: float) -> Tensor:
    d = torch.randn(*shape, generator=g, dtype=torch.float64)
    if norm == "linf":
        d = d.sign()
    return d * (step / _norm(d, norm).view(-1, *[1] * (d.dim() - 1)))


def _inputs(case: LayerCase, g: torch.Generator, scale: float, batch: int = 8) -> Tensor:
    return torch.randn(batch, *case.in_shape, generator=g, dtype=torch.float64) * scale * case.scale


def _box(g: torch.Generator, a: Tensor, scale: float, width: float, exact: float = 0.0) -> tuple[Tensor, Tensor]:
    """A random box around ``a`` (half-widths up to ``width * scale``; a fraction ``exact`` of the
    coordinates a single point)."""
    r = torch.rand(a.shape, generator=g, dtype=torch.float64) * width * scale
    if exact:
        r = torch.where(torch.rand(a.shape, generator=g) < exact, torch.zeros_like(r), r)
    return a - r, a + r


def _points(g: torch.Generator, lo: Tensor, hi: Tensor, n: int) -> list[Tensor]:
    """The two corners ``lo``, ``hi`` and ``n`` uniform points of the box."""
    return [lo, hi] + [lo + torch.rand(lo.shape, generator=g, dtype=torch.float64) * (hi - lo) for _ in range(n)]


def max_ratio(f, a: Tensor, g: torch.Generator, step: float, norm: str, iters: int = 12) -> tuple[float, str]:
    """Largest ``||f(a') - f(b')|| / ||a' - b'||`` (``norm``) over random near pairs, far pairs and
    pairs from gradient ascent of the ratio at distance ``step``; with a description of the pair."""
    best, where = 0.0, ""

    def record(x: Tensor, y: Tensor, what: str) -> None:
        nonlocal best, where
        with torch.no_grad():
            r = _norm(f(x) - f(y), norm) / _norm(x - y, norm)
        if float(r.max()) > best:
            best, where = float(r.max()), f"{what} (|a-b| = {float(_norm(x - y, norm)[r.argmax()]):.3g})"

    record(a, a + _direction(g, a.shape, norm, step), "random near pair")
    record(a, a.flip(0) + _direction(g, a.shape, norm, 1e-3), "far pair")
    fa = f(a).detach()
    d = _direction(g, a.shape, norm, step)
    view = (-1, *[1] * (a.dim() - 1))
    for _ in range(iters):
        d = d.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_norm(f(a + d) - fa, norm).sum(), d)
        if not grad.flatten(1).abs().sum(1).gt(0).any():
            break
        with torch.no_grad():
            if norm == "linf":
                d = step * grad.sign()
            else:
                d = step * grad / _norm(grad, "l2").clamp_min(1e-300).view(view)
        record(a, a + d, "gradient-ascent pair")
    return best, where


def _check_ratio(f, a, g, step, norm, bound: float, what: str) -> None:
    ratio, where = max_ratio(f, a, g, step, norm)
    assert ratio <= bound * (1 + RTOL) + 1e-9, f"{what}: {norm} ratio {ratio!r} > declared {bound!r} on a {where}"


# ------------------------------------------------------------------------------- l-inf constants
@pytest.mark.parametrize("case", _cases(lambda m: hasattr(m, "linf_lipschitz")))
@FAST
@given(seed=SEEDS, scale=SCALES, step=STEPS)
def test_linf_ratio_below_declared_constant(case, seed, scale, step):
    g = torch.Generator().manual_seed(seed)
    layer = case.make(g)
    bound = float(layer.linf_lipschitz())
    assert 0 < bound < math.inf
    _check_ratio(layer, _inputs(case, g, scale), g, step, "linf", bound, f"{case.id}.linf_lipschitz()")


# ------------------------------------------------------------------------------- l2 constants
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.l2_constants is not None])
@FAST
@given(seed=SEEDS, scale=SCALES, step=STEPS)
def test_l2_ratio_below_stated_bounds(case, seed, scale, step):
    g = torch.Generator().manual_seed(seed)
    layer = case.make(g)
    a = _inputs(case, g, scale)
    with torch.no_grad():
        bounds = case.l2_constants(layer)
    assert bounds
    ratio, where = max_ratio(layer, a, g, step, "l2")
    for name, bound in bounds.items():
        assert ratio <= bound * (1 + RTOL) + 1e-9, f"{case.id}: l2 ratio {ratio!r} > {name} = {bound!r} on a {where}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in OPERATOR_BANK])
@FAST
@given(seed=SEEDS, scale=SCALES, step=STEPS)
def test_l2_operator_norm_upper_bounds_the_layer(case, seed, scale, step):
    """``norm_upper()`` of the operator LipschitzChain / LTNet read for a layer (input normalisation
    folded in) bounds the layer's l2 gain."""
    from lipcert.bounds.chain import LipschitzChain
    from lipcert.bounds.ltnet import LTNet

    g = torch.Generator().manual_seed(seed)
    seq = case.make(g)
    chain_bound = LipschitzChain.from_model(seq, in_shape=case.in_shape).ops()[0].norm_upper()
    lt_bound = LTNet.from_model(seq, in_shape=case.in_shape).atoms[0].norm_upper()
    a = torch.randn(8, *case.in_shape, generator=g, dtype=torch.float64) * scale
    ratio, where = max_ratio(seq, a, g, step, "l2", iters=20)
    for name, bound in (("LipschitzChain op", chain_bound), ("LTNet atom", lt_bound)):
        assert ratio <= bound * (1 + RTOL) + 1e-9, f"{case.id}: l2 ratio {ratio!r} > {name} norm_upper {bound!r} on a {where}"


# ------------------------------------------------------------------------------- activations
@pytest.mark.parametrize("case", _cases(_is_activation))
@FAST
@given(seed=SEEDS, scale=SCALES, step=STEPS)
def test_activation_lipschitz_and_slope_bounds(case, seed, scale, step):
    from lipcert.bounds.ltnet import slope_bounds

    g = torch.Generator().manual_seed(seed)
    act = case.make(g)
    a = _inputs(case, g, scale)
    _check_ratio(act, a, g, step, "l2", float(act.lipschitz), f"{case.id}.lipschitz")
    alpha, beta = slope_bounds(act)
    c, d = (alpha + beta) / 2, (beta - alpha) / 2
    # LipLT's loop transformation: psi = phi - c I is d-Lipschitz in l2 (ltnet.register_slopes)
    _check_ratio(lambda z: act(z) - c * z, a, g, step, "l2", d, f"{case.id}: phi - {c} I vs slope bounds {(alpha, beta)}")
    b = a + _direction(g, a.shape, "l2", step)
    with torch.no_grad():
        da, db = act(a), act(b)
    if case.elementwise:
        q = (da - db) / (a - b)
        ok = (a - b) != 0
        assert ((q[ok] >= alpha - 1e-9) & (q[ok] <= beta + 1e-9)).all(), (
            f"{case.id}: difference quotients in [{float(q[ok].min())}, {float(q[ok].max())}], outside {(alpha, beta)}")
    # error_rule bounds output differences elementwise by a function of the input differences
    assert ((da - db).abs() <= act.error_rule((a - b).abs()) * (1 + 1e-12) + 1e-300).all(), f"{case.id}: error_rule too small"


@pytest.mark.parametrize("case", _cases(_is_activation))
@FAST
@given(seed=SEEDS, scale=SCALES, width=st.floats(0.0, 2.0))
def test_activation_box_and_masks(case, seed, scale, width):
    g = torch.Generator().manual_seed(seed)
    act = case.make(g)
    a = _inputs(case, g, scale)
    lo, hi = _box(g, a, scale, width, exact=0.2)  # some coordinates exact
    with torch.no_grad():
        box_lo, box_hi = act.box(lo, hi)
        in_mask, out_mask = act.varying(lo, hi)
        zs = _points(g, lo, hi, 6)
        ref = act(zs[0])
        for z in zs:
            out = act(z)
            assert ((box_lo <= out) & (out <= box_hi)).all(), f"{case.id}: box() misses an output of the box"
            assert torch.equal(out[~out_mask], ref[~out_mask]), f"{case.id}: an output varying() calls constant varies"
            # inputs outside in_mask do not reach any output
            z2 = torch.where(in_mask, z, lo + torch.rand(a.shape, generator=g, dtype=torch.float64) * (hi - lo))
            assert torch.equal(act(z2), out), f"{case.id}: an input outside varying()'s in_mask changes an output"


# ------------------------------------------------------------------------------- interval rules
def _interval_applies(layer) -> bool:
    p = current_p(layer)
    return hasattr(layer, "interval_bounds") and (p is None or math.isinf(p))


@pytest.mark.parametrize("case", _cases(_interval_applies))
@FAST
@given(seed=SEEDS, scale=SCALES, width=st.floats(0.0, 2.0))
def test_interval_bounds_contain_every_output(case, seed, scale, width):
    g = torch.Generator().manual_seed(seed)
    layer = case.make(g)
    a = _inputs(case, g, scale)
    lo, hi = _box(g, a, scale, width)
    with torch.no_grad():
        low, up = layer.interval_bounds(lo, hi, U64)
        for z in _points(g, lo, hi, 8):
            out = layer(z)
            assert ((low <= out) & (out <= up)).all(), (
                f"{case.id}: output outside interval_bounds by {float(torch.maximum(low - out, out - up).max())}")


# ------------------------------------------------------------------------------- rounding bounds
def _rounding_applies(layer) -> bool:
    p = current_p(layer)
    lp = p is not None and not math.isinf(p) and any(getattr(m, "relaxation", "lp") == "lp" for m in layer.modules())
    return hasattr(layer, "rounding_error") and not lp


def _float_pair(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The layer with float32 parameters, and the same values in float64."""
    l32 = copy.deepcopy(layer).float()
    return l32, copy.deepcopy(l32).double()


@pytest.mark.parametrize("case", _cases(_rounding_applies))
@FAST
@given(seed=SEEDS, scale=SCALES)
def test_rounding_error_bounds_a_float32_evaluation(case, seed, scale):
    g = torch.Generator().manual_seed(seed)
    l32, l64 = _float_pair(case.make(g))
    x32 = _inputs(case, g, scale).float()
    with torch.no_grad():
        y32, y64 = l32(x32), l64(x32.double())
        m_in = x32.double().flatten(1).abs().amax(1)
        m_out = y64.flatten(1).abs().amax(1)
        bound = l64.rounding_error(m_in, m_out * (1 + 1e-6), U32) + l64.rounding_error(m_in, m_out, U64)
    err = (y32.double() - y64).flatten(1).abs().amax(1)
    assert (err <= bound).all(), f"{case.id}: float32 error {float(err.max())!r} > rounding_error {float(torch.as_tensor(bound).max())!r}"


def _residual_reference(layer: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    """Fazlyab23 Eq. 12 written out from ``liplt_parts`` (h x + g W^T diag(t) phi(W x + b), g < 0), in
    x's dtype with the layer's stored constants (h, g, t, W, b as the layer holds them)."""
    parts = layer.liplt_parts(t)
    dt = x.dtype
    w, h, gg, act = parts["weight"].to(dt), parts["h"].to(dt), parts["g"].to(dt), parts["act"]
    return h * x + gg * ((act(x @ w.T + layer.bias.to(dt)) * t.to(dt)) @ w)


@pytest.mark.parametrize("case", _cases(lambda m: hasattr(m, "liplt_parts")))
@FAST
@given(seed=SEEDS, scale=SCALES)
def test_liplt_parts_describe_forward_and_error_bound_holds(case, seed, scale):
    g = torch.Generator().manual_seed(seed)
    layer = case.make(g)
    x = _inputs(case, g, scale)
    with torch.no_grad():
        t = layer.t_diag()
        assert (t > 0).all()
        torch.testing.assert_close(layer(x, t), _residual_reference(layer, x, t), rtol=1e-12, atol=1e-12 * scale)
        l32 = copy.deepcopy(layer).float()
        t32 = l32.t_diag()
        x32 = x.float()
        out32, err32 = l32.error_bound(x32, torch.zeros_like(x32), t32, U32)
        torch.testing.assert_close(out32, l32(x32, t32))
        exact = _residual_reference(l32, x32.double(), t32)  # float32 constants, float64 arithmetic
    assert ((out32.double() - exact).abs() <= err32.double() + 64 * U64 * exact.abs()).all(), f"{case.id}: error_bound too small"
