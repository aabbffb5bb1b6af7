"""The shared norm cache (lipcert.bounds.norm_cache): each layer's rigorous norm bound is computed
once per certify call, and a changed tensor never gets a stale bound."""

from __future__ import annotations

import collections
import contextlib

import pytest
import torch
from torch import nn

import lipcert.bounds.operators as operators
from lipcert import certify, models
from lipcert.bounds.analysis import L2Bounds
from lipcert.bounds.norm_cache import NormCache, shared_norms
from lipcert.bounds.operators import ConvOp, DenseOp


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return models.build("4c3f", in_shape=[1, 8, 8], num_classes=3, width=0.125, mean=[0.3], std=0.4).eval()


def _count_norms(monkeypatch) -> collections.Counter:
    """Count the float64 SVD / polyphase-FFT bounds the layer operators compute, by (function,
    weight shape, whether the argument is |W|)."""
    calls: collections.Counter = collections.Counter()

    def counting(name, fn):
        def wrapped(w, *args, **kwargs):
            calls[(name, tuple(w.shape), bool((w >= 0).all()))] += 1
            return fn(w, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(operators, "dense_norm_upper", counting("dense", operators.dense_norm_upper))
    monkeypatch.setattr(operators, "conv_norm_upper", counting("conv", operators.conv_norm_upper))
    return calls


def _best(model):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 3
    return certify.certify(model, x, y, bound="best", eps=[0.1])


def test_bound_best_computes_each_layer_norm_once(monkeypatch):
    model = _small_model()
    n_ops = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    calls = _count_norms(monkeypatch)
    cert = _best(model)
    # every operator's ||W|| (global, local-upper, float32 error walk, LipLT) and || |W| || (LipLT's
    # rounding slacks), each once
    assert len(calls) == 2 * n_ops
    assert set(calls.values()) == {1}, dict(calls)

    # the same run without the shared cache computes ||W|| once per engine (three times): the
    # count above is the cache's doing, and the radii are the same numbers
    calls.clear()
    monkeypatch.setattr("lipcert.certify.driver.shared_norms", contextlib.nullcontext)
    again = _best(model)
    assert max(calls.values()) == 3 and sum(calls.values()) == 4 * n_ops
    assert torch.equal(cert.radius, again.radius)


def test_values_are_those_computed_without_the_cache():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    op = lambda: ConvOp(w, (5, 6, 6), stride=2, padding=1)  # noqa: E731
    plain = (op().norm_upper(), op().abs_norm_upper())
    with shared_norms() as cache:
        first = (op().norm_upper(), op().abs_norm_upper())
        second = (op().norm_upper(), op().abs_norm_upper())
    assert first == plain == second
    assert (cache.computed, cache.reused) == (2, 2)


@pytest.mark.parametrize("how", ["inplace", "data", "numpy"])
def test_a_weight_changed_in_place_gets_a_new_bound(how):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    with shared_norms() as cache:
        before = DenseOp(w).norm_upper()
        if how == "inplace":
            with torch.no_grad():
                w.mul_(2)
        elif how == "data":
            w.data.mul_(2)  # bypasses the version counter
        else:
            w.numpy()[...] *= 2  # bypasses torch altogether
        after = DenseOp(w).norm_upper()
    assert after == pytest.approx(2 * before, rel=1e-12)
    assert cache.computed == 2 and cache.reused == 0


def test_an_in_place_change_of_the_model_changes_its_bounds():
    model = _small_model()
    with shared_norms() as cache:
        before = L2Bounds(model)
        again = L2Bounds(model)  # a second float64 copy: same tensors in content, bounds shared
        assert again.layer_upper == before.layer_upper and cache.reused == len(before.layer_upper)
        with torch.no_grad():
            model[-1].weight.mul_(3)  # the logit layer
        after = L2Bounds(model)
    assert after.layer_upper[:-1] == before.layer_upper[:-1]
    assert after.layer_upper[-1] == pytest.approx(3 * before.layer_upper[-1], rel=1e-6)  # x3 rounded in float32
    assert after.global_upper > 2.9 * before.global_upper
    # and through certify: the same call after the change certifies with the new bound
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cert = certify.certify(model, x, torch.arange(6) % 3, bound="global")
    assert float(cert.extra["lipschitz_global"][0]) == pytest.approx(after.global_upper, rel=1e-12)


def test_tensors_equal_in_content_share_a_value():
    w = torch.randn(3, 3, dtype=torch.float64)
    cache = NormCache()
    assert cache.get(("k",), (w,), lambda: 1.0) == 1.0
    assert cache.get(("k",), (w.clone(),), lambda: 2.0) == 1.0  # equal content: shared
    assert cache.get(("k",), (w + 1,), lambda: 3.0) == 3.0
    assert cache.get(("k",), (w.float(),), lambda: 4.0) == 4.0  # another dtype is another tensor
    assert (cache.computed, cache.reused) == (3, 1)
