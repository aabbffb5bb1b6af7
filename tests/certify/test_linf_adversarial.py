"""Adversarial review of the l-inf certificates (margin, interval, best, hybrid, ensemble): weights
chosen to break the floating-point argument, exhaustive search on 2-D inputs, and user mistakes
that must give a clear error instead of NaN radii or a certificate about the wrong inputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lipcert import certify, models
from lipcert.certify import CertificationError
from lipcert.certify.linf_chain import U32, forward_with_absmax
from lipcert.models.linf import LinfDistNet
from lipcert.models.linf_ensemble import LinfEnsemble
from lipcert.models.linf_hybrid import LinfHybridNet
from lipcert.nn import (
    Flatten,
    InputNormalize,
    LinfDistConv2d,
    LinfDistLinear,
    LinfDistResidual,
    MaxPool2d,
    MeanShiftNorm,
    Negate,
)

METHODS = ["margin", "interval", "best"]


def _overflow_net() -> LinfDistNet:
    """Class 1 wins in exact arithmetic (distance 6.1e38 < 6.2e38), but both distances overflow
    float32 to inf, so float32 inference sees a tie at -inf and predicts class 0."""
    lin1, lin2 = LinfDistLinear(1, 1), LinfDistLinear(1, 2)
    with torch.no_grad():
        lin1.weight.fill_(-3.0e38)
        lin2.weight.copy_(torch.tensor([[-3.2e38], [-3.1e38]]))
    return LinfDistNet(InputNormalize([0.0], 1.0), Flatten(), lin1, lin2, Negate()).eval()


@pytest.mark.parametrize("method", METHODS)
def test_float32_overflow_is_never_certified(method):
    net = _overflow_net()
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([1])
    with torch.no_grad():
        assert net(x).argmax(1).item() == 0  # float32 inference is wrong: the case has teeth
        assert copy.deepcopy(net).double()(x.double()).argmax(1).item() == 1
    cert = certify.certify(net, x, y, method=method)
    assert cert.prediction.tolist() == [1]
    assert cert.radius.tolist() == [0.0]


def test_ensemble_float32_overflow_is_never_certified():
    ens = LinfEnsemble([_overflow_net(), _overflow_net()]).eval()
    x, y = torch.full((1, 1, 1, 1), 0.5), torch.tensor([1])
    assert certify.certify(ens, x, y).radius.tolist() == [0.0]
    assert certify.certify(ens, x, y, method="best").radius.tolist() == [0.0]


def _hybrid_nan_head() -> LinfHybridNet:
    """Hidden unit 3e38 * (f1 - f2) with f = (2, 2.0001): exactly -3e34, but float32 computes
    inf - inf = NaN, so the float32 logits are NaN (argmax: class 0) while class 1 wins exactly."""
    backbone = LinfDistNet(InputNormalize([0.0], [1.0]), Flatten(), LinfDistLinear(1, 2))
    head = nn.Sequential(nn.Linear(2, 1), nn.Tanh(), nn.Linear(1, 2))
    with torch.no_grad():
        backbone[2].weight.copy_(torch.tensor([[-2.0], [-2.0001]]))
        head[0].weight.copy_(torch.tensor([[3e38, -3e38]]))
        head[0].bias.zero_()
        head[2].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        head[2].bias.zero_()
    return LinfHybridNet(backbone, head).eval()


def test_hybrid_float32_overflow_in_head_is_never_certified():
    model = _hybrid_nan_head()
    x, y = torch.zeros(1, 1, 1, 1), torch.tensor([1])
    with torch.no_grad():
        assert torch.isnan(model(x)).all()
        assert copy.deepcopy(model).double()(x.double()).argmax(1).item() == 1
    cert = certify.certify(model, x, y)
    assert cert.prediction.tolist() == [1]
    assert cert.radius.tolist() == [0.0]


def _tiny(num_classes=4):
    torch.manual_seed(0)
    return models.build("linf_mlp", in_shape=[1, 3, 3], num_classes=num_classes, width=8, depth=2, mean=[0.5], std=0.25).eval()


def _tiny_hybrid():
    torch.manual_seed(0)
    return models.build("linf_mlp_hybrid", in_shape=[1, 3, 3], num_classes=4, width=8, depth=1, head_hidden=4).eval()


def _tiny_ensemble():
    torch.manual_seed(0)
    return models.build(
        "linf_ensemble", member={"name": "linf_mlp", "width": 8, "depth": 2}, n=2, in_shape=[1, 3, 3], num_classes=4,
        mean=[0.5], std=0.25,
    ).eval()


CASES = [(_tiny, "margin"), (_tiny, "interval"), (_tiny, "best"), (_tiny_hybrid, None), (_tiny_ensemble, None),
         (_tiny_ensemble, "best")]


@pytest.mark.parametrize("build,method", CASES)
def test_non_finite_parameters_are_refused(build, method):
    model = build()
    x = torch.rand(3, 1, 3, 3)
    y = torch.zeros(3, dtype=torch.long)
    buf = next(t for name, t in model.named_buffers() if name.endswith("running_mean"))
    buf[0] = math.nan
    with pytest.raises(CertificationError, match="NaN or inf"):
        certify.certify(model, x, y, method=method)


@pytest.mark.parametrize("build,method", CASES)
def test_labels_out_of_range_are_refused(build, method):
    x = torch.rand(3, 1, 3, 3)
    with pytest.raises(CertificationError, match="label 7 is out of range for a model with 4 outputs"):
        certify.certify(build(), x, torch.tensor([0, 1, 7]), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_single_output_model_is_refused(method):
    """Before: NaN radii (margin inf - inf) or radius 1 (interval)."""
    with pytest.raises(CertificationError, match="at least 2 classes"):
        certify.certify(_tiny(num_classes=1), torch.rand(3, 1, 3, 3), torch.zeros(3, dtype=torch.long), method=method)


@pytest.mark.parametrize("build", [_tiny])
def test_interval_certificates_refuse_inputs_outside_the_pixel_range(build):
    """The interval box is clipped to [0, 1]; on 0..255 inputs it would not even contain x (before:
    radius 1 on samples whose margin radius is 0.02)."""
    model = build()
    x = torch.rand(3, 1, 3, 3) * 255
    y = model(x).argmax(1)
    with pytest.raises(CertificationError, match=r"raw inputs in \[0, 1\]"):
        certify.certify(model, x, y, method="interval")


@pytest.mark.parametrize("build,margin_method", [(_tiny, "linf_margin"), (_tiny_ensemble, "ensemble_margin")])
def test_best_certificate_outside_the_pixel_range_is_the_margin_alone(build, margin_method):
    """``best`` (the default) never clips a ball that does not lie in [0, 1]: there it is the margin
    certificate (unclipped ball), and says so in ``method``."""
    model = build()
    x = torch.rand(3, 1, 3, 3) * 255
    y = model(x).argmax(1)
    best = certify.certify(model, x, y, method="best")
    assert best.method == margin_method
    torch.testing.assert_close(best.radius, certify.certify(model, x, y, method="margin").radius)


def _u32_bound(layers, absmax, r):
    """The float32 part of :func:`lipcert.certify.margin.rounding_bound` at radius r."""
    lips = [float(layer.linf_lipschitz()) for layer in layers]
    err = torch.zeros_like(r)
    for i, (layer, (m_in, m_out)) in enumerate(zip(layers, absmax)):
        s, pi, po = math.prod(lips[i + 1 :]), math.prod(lips[:i]), math.prod(lips[: i + 1])
        err += s * layer.rounding_error(m_in + r * pi, m_out + r * po, U32)
    return err


def _scaled(net, weight_scale, mean_scale):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, MeanShiftNorm):
                m.running_mean.normal_().mul_(mean_scale)
            elif isinstance(m, (LinfDistLinear, LinfDistConv2d)):
                m.weight.mul_(weight_scale)
                if m.bias is not None:
                    m.bias.normal_().mul_(3 * weight_scale)
    return net.eval()


def _mlp(std):
    return LinfDistNet(
        InputNormalize([0.5], std), Flatten(), LinfDistLinear(6, 16), MeanShiftNorm(16), LinfDistLinear(16, 16, bias=True),
        MeanShiftNorm(16), LinfDistLinear(16, 5, bias=True), Negate(),
    )


def _convnet(c, p, relaxation):
    return LinfDistNet(
        InputNormalize([0.1, 0.9], [0.3, 0.01]),
        LinfDistConv2d(2, 4, 3, stride=2, padding=1, groups=2, p=p, relaxation=relaxation, pad_value=3.0),
        MeanShiftNorm(4),
        LinfDistResidual(LinfDistConv2d(4, 4, 3, padding=1, p=p, relaxation=relaxation), c=c),
        MaxPool2d(2, stride=1), Flatten(), MeanShiftNorm(16),
        LinfDistLinear(16, 3, bias=True, p=p, relaxation=relaxation), Negate(),
    )


NETS = {
    "mlp-huge-weights-tiny-std": (lambda: _scaled(_mlp(1e-3), 1e6, 1e4), (32, 1, 1, 6)),
    "mlp-huge-running-means": (lambda: _scaled(_mlp(0.25), 1.0, 1e4), (32, 1, 1, 6)),
    "conv-groups-pad-residual-c0.999": (lambda: _scaled(_convnet(0.999, math.inf, "lp"), 50, 100), (16, 2, 6, 6)),
    "conv-residual-lse-p0.5": (lambda: _scaled(_convnet(0.3, 0.5, "lse"), 50, 100), (16, 2, 6, 6)),
    "conv-lse-p50": (lambda: _scaled(_convnet(0.0, 50.0, "lse"), 50, 100), (16, 2, 6, 6)),
}


@pytest.mark.parametrize("name", list(NETS))
def test_float32_inference_error_within_rounding_bound(name):
    """|float32 logits - float64 logits| at perturbed inputs never exceeds the float32 part of the
    rounding bound the margin certificate subtracts (adversarial magnitudes, every layer kind)."""
    torch.manual_seed(0)
    build, shape = NETS[name]
    net = build()
    net64 = copy.deepcopy(net).double()
    layers = list(net64.children())
    x = torch.rand(shape)
    r = 0.05
    _, absmax = forward_with_absmax(layers, x.double())
    bound = _u32_bound(layers, absmax, torch.full((shape[0],), r, dtype=torch.float64))
    worst = 0.0
    with torch.no_grad():
        for t in range(12):
            d = (torch.rand_like(x) * 2 - 1) * r if t % 2 else torch.sign(torch.randn_like(x)) * r
            xp = x + d if t else x
            err = (net(xp).double() - net64(xp.double())).abs().amax(1)
            worst = max(worst, float((err / bound).max()))
    assert worst <= 1.0, f"float32 error exceeds the bound by {worst:.3g}x"
    assert worst > 1e-3  # the bound is not vacuous: rounding is really exercised


def _net_2d(seed):
    """Random 2-input net whose three decision regions all cross [0, 1]^2 (seed 5: 134/215/51 of 400)."""
    torch.manual_seed(seed)
    net = models.build("linf_mlp", in_shape=[1, 1, 2], num_classes=3, width=6, depth=3, mean=[0.5], std=0.25,
                       identity_init=False).eval()
    with torch.no_grad():
        net[2].weight.uniform_(-2, 2)  # normalised pixels span [-2, 2]
        for m in net.modules():
            if isinstance(m, MeanShiftNorm):
                m.running_mean.uniform_(0, 4)
    return net


@pytest.mark.parametrize("method", METHODS)
def test_dense_grid_inside_certified_radius_never_flips_2d(method):
    """Exhaustive check on 2-D inputs: every point of a 61 x 61 grid of the certified box (clipped to
    [0, 1]: the threat model of every method) and its corners keep the label, in float32 and float64."""
    net = _net_2d(5)
    net64 = copy.deepcopy(net).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 1, 2, generator=g)
    x[:6] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.3], [0.02, 0.98], [0.5, 0.0]]).view(6, 1, 1, 2)
    y = net(x).argmax(1)
    cert = certify.certify(net, x, y, method=method)
    ok = cert.radius > 0
    assert int(ok.sum()) >= 15
    t = torch.linspace(-1, 1, 61, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2)
    inflated_broken = 0
    for i in ok.nonzero()[:, 0].tolist():
        r = float(cert.radius[i])
        pts = (x[i].view(1, 2).double() + r * grid).clamp(0, 1).view(-1, 1, 1, 2)
        with torch.no_grad():
            assert (net64(pts).argmax(1) == y[i]).all(), f"sample {i}: float64 flip inside radius {r}"
            assert (net(pts.float()).argmax(1) == y[i]).all(), f"sample {i}: float32 flip inside radius {r}"
            far = (x[i].view(1, 2).double() + 1.5 * r * grid).clamp(0, 1).view(-1, 1, 1, 2)
            inflated_broken += int((net64(far).argmax(1) != y[i]).any())
    assert inflated_broken >= 5  # teeth: at 1.5 x the radius the same grid finds label changes


def test_interval_grid_with_eps_zero_certifies_correct_samples():
    """eps = 0 in the list: before, the grid tested radius 0 and reported radius 0, so certified
    accuracy at eps = 0 was 0 although the margin certifies these samples."""
    net = _net_2d(5)
    x = torch.rand(30, 1, 1, 2, generator=torch.Generator().manual_seed(1))
    y = net(x).argmax(1)
    g = certify.certify(net, x, y, method="interval", eps=[0.0, 0.9])
    m = certify.margin(net, x, y)
    assert (g.certified(0.0) >= m.certified(0.0)).all()
    assert g.certified_accuracy(0.0) > 0.8
