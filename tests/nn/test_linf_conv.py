"""LinfDistConv2d: plain-formula agreement, gradients, Lipschitz facts, identity init, intervals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.nn import LinfDistConv2d, set_p
from lipcert.nn.kernels.reference import lp_dist_naive
from lipcert.nn.lse import lse_dist_naive
from tests.linf_family_helpers import linf_ratio, random_pairs, train_layer_briefly

P_VALUES = [1.0, 2.0, 8.0, 1000.0, math.inf]


def naive_conv(layer: LinfDistConv2d, x: torch.Tensor) -> torch.Tensor:
    """Loop over output positions: distance of each explicit patch to each filter (tiny shapes only)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    xp = F.pad(x, (pw, pw, ph, ph), value=layer.pad_value)
    ho, wo = layer.output_shape(x.shape[2], x.shape[3])
    cg, og = layer.in_channels // layer.groups, layer.out_channels // layer.groups
    out = torch.empty(x.shape[0], layer.out_channels, ho, wo, dtype=x.dtype)
    for g in range(layer.groups):
        w = layer.weight[g * og : (g + 1) * og].reshape(og, -1)
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg : (g + 1) * cg, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(x.shape[0], -1)
                if layer.relaxation == "lse" and not math.isinf(layer.p):
                    d = lse_dist_naive(patch, w, layer.p)
                else:
                    d = lp_dist_naive(patch, w, layer.p)
                out[:, g * og : (g + 1) * og, i, j] = d
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, 1, 1)
    return out


CONFIGS = [
    dict(in_channels=2, out_channels=3, kernel_size=3),
    dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), groups=2),
    dict(in_channels=3, out_channels=3, kernel_size=1, bias=True),
    dict(in_channels=1, out_channels=2, kernel_size=3, padding=2, pad_value=0.7),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("p", P_VALUES)
def test_matches_naive_patch_formula(cfg, p):
    layer = LinfDistConv2d(**cfg, p=p).double()
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    x = torch.randn(3, cfg["in_channels"], 6, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_conv(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("p", [8.0, math.inf])
def test_gradients_match_naive_patch_formula(cfg, p):
    # the patch extraction's own backward (kh*kw strided adds, channels-last) against autograd
    # through the explicit per-position patches, for strides, padding, pad values and groups
    layer = LinfDistConv2d(**cfg, p=p).double()
    x = torch.randn(3, cfg["in_channels"], 6, 7, dtype=torch.float64)
    g = torch.randn_like(layer(x))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (layer(xa) * g).sum().backward()
    gw = layer.weight.grad.clone()
    layer.weight.grad = None
    (naive_conv(layer, xb) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, layer.weight.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS[:3])
@pytest.mark.parametrize("p", [2.0, 8.0, 0.5])
def test_lse_relaxation_matches_naive(cfg, p):
    layer = LinfDistConv2d(**cfg, p=p, relaxation="lse").double()
    x = torch.randn(2, cfg["in_channels"], 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_conv(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p,relaxation", [(8.0, "lp"), (math.inf, "lp"), (3.0, "lse")])
def test_gradcheck_float64(p, relaxation):
    layer = LinfDistConv2d(2, 3, 3, stride=2, padding=1, groups=1, p=p, bias=True, relaxation=relaxation).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)  # continuous: no ties in the max
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    fn = lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("trained", [False, True])
def test_one_lipschitz_random_pairs(cfg, trained):
    layer = LinfDistConv2d(**cfg).double()
    a, b = random_pairs((cfg["in_channels"], 6, 6), n=64)
    if trained:
        before = layer.weight.detach().clone()
        set_p(layer, 8.0)
        train_layer_briefly(layer, a[:16])
        set_p(layer, math.inf)
        assert (layer.weight - before).abs().max() > 0.1
    assert layer.linf_lipschitz() == 1.0
    ratio = linf_ratio(layer, a, b)
    assert (ratio <= 1 + 1e-12).all()
    assert ratio.max() > 0.5  # the bound is not vacuous on these pairs


@pytest.mark.parametrize("p", [2.0, 8.0])
def test_lp_relaxation_lipschitz_constant(p):
    layer = LinfDistConv2d(2, 3, 3, padding=1, p=p).double()
    assert layer.linf_lipschitz() == pytest.approx(18 ** (1 / p))
    a, b = random_pairs((2, 5, 5))
    assert (linf_ratio(layer, a, b) <= layer.linf_lipschitz() * (1 + 1e-12)).all()


def test_identity_init_computes_shifted_centre_pixel():
    torch.manual_seed(0)
    layer = LinfDistConv2d(3, 6, 3, padding=1, identity_init=True)
    x = torch.rand(4, 3, 5, 5)
    y = layer(x)
    expected = torch.cat([x, x], dim=1) + 10.0  # channel o copies channel o mod 3
    torch.testing.assert_close(y, expected)
    with pytest.raises(ValueError, match="identity-map init"):
        LinfDistConv2d(6, 3, 3, identity_init=True)


def test_clear_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        LinfDistConv2d(3, 4, 3, groups=2)
    layer = LinfDistConv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        layer(torch.rand(2, 2, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer(torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="relaxation"):
        LinfDistConv2d(3, 4, 3, relaxation="softmax")


@pytest.mark.parametrize("cfg", CONFIGS)
def test_interval_bounds_exact_and_sound(cfg):
    layer = LinfDistConv2d(**cfg).double()
    centre = torch.rand(2, cfg["in_channels"], 5, 6, dtype=torch.float64)
    rad = 0.2 * torch.rand_like(centre)
    lo, hi = centre - rad, centre + rad
    lower, upper = layer.interval_bounds(lo, hi)
    samples = lo + (hi - lo) * torch.rand(200, *centre.shape, dtype=torch.float64)
    outs = torch.stack([layer(s) for s in samples])
    assert (outs >= lower - 1e-12).all() and (outs <= upper + 1e-12).all()
    # exactness: some sample gets close to each bound on average; the vertex construction is tested in test_box
    assert (outs.amin(0) - lower).mean() < 0.1 and (upper - outs.amax(0)).mean() < 0.1
    with pytest.raises(ValueError, match="p = inf"):
        set_p(layer, 8.0)
        layer.interval_bounds(lo, hi)


def test_float32_rounding_error_bound_holds():
    torch.manual_seed(0)
    layer = LinfDistConv2d(3, 5, 3, padding=1, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(8, 3, 6, 6) * 3
    y32 = layer(x).double()
    y64 = layer.double()(x.double())
    err = (y32 - y64).flatten(1).abs().amax(1)
    bound = layer.rounding_error(x.double().flatten(1).abs().amax(1), y64.flatten(1).abs().amax(1), 2.0**-24)
    assert (err <= bound).all()
