"""l-inf-dist CNNs and hybrids: EMAReport's parameter counts, shapes, 1-Lipschitz in raw pixels, set_p,
certificate kinds, checkpoint rebuild, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert import certify, models
from lipcert.models import LinfDistNet, LinfHybridNet
from lipcert.nn import LinfDistConv2d, current_p, set_p
from tests.linf_family_helpers import linf_ratio


def _params(m):
    return sum(p.numel() for p in m.parameters())


SLOW = pytest.mark.slow  # builds tens of millions of parameters (seconds each)


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [
        ("linf_lenet", {}, 117_420),  # EMAReport Tables 2 / 3
        ("linf_lenet", {"head": "mlp"}, 703_660),  # EMAReport Tables 2-4
        ("linf_lenet", {"head": "mlp", "in_shape": [1, 28, 28]}, 703_360),  # EMAReport Table 4 MNIST
        ("linf_lenet", {"head": "mlp", "num_classes": 100}, 749_830),  # EMAReport Table 4 CIFAR-100
        ("linf_alexnet", {}, 6_613_802),  # EMAReport Table 2
        ("linf_alexnet", {"head": "mlp"}, 7_662_890),
        pytest.param("linf_conv", {}, 51_256_874, marks=SLOW),  # EMAReport Table 2 ConvNet
        pytest.param("linf_conv", {"head": "mlp"}, 51_776_554, marks=SLOW),
        pytest.param("linf_mlp_hybrid", {"in_shape": [3, 32, 32], "depth": 5, "head_hidden": 512}, 123_213_322, marks=SLOW),
        pytest.param("linf_mlp_hybrid", {}, 83_970_826, marks=SLOW),  # MNIST Net+MLP, EMAReport Table 1
    ],
)
def test_parameter_counts_match_002(name, kwargs, expected):
    assert _params(models.build(name, **kwargs)) == expected


SMALL = [
    ("linf_conv", dict(in_shape=[1, 8, 8], width=4, fc=16)),
    ("linf_lenet", dict(in_shape=[1, 28, 28], channels=[2, 4], fc=[8, 8])),
    ("linf_lenet", dict(in_shape=[3, 32, 32], channels=[2, 4], fc=[8, 8])),
    ("linf_alexnet", dict(in_shape=[3, 32, 32], fc=[8, 8])),
    ("linf_vgg", dict(in_shape=[1, 16, 16], channels=[2, 4, 4], depths=[1, 2, 1], pools=[True, True, False], fc=[8])),
    ("linf_mlp_hybrid", dict(in_shape=[1, 4, 4], width=8, depth=2)),
]


@pytest.mark.parametrize("name,kwargs", SMALL)
@pytest.mark.parametrize("head", [None, "mlp"])
def test_forward_shapes_kinds_and_p(name, kwargs, head):
    kwargs = {**kwargs, "head": head, "num_classes": 5, "mean": [0.5] * kwargs["in_shape"][0], "std": 0.25}
    model = models.build(name, **kwargs).eval()
    x = torch.rand(2, *kwargs["in_shape"])
    assert model(x).shape == (2, 5)
    assert isinstance(model, LinfHybridNet if head == "mlp" else LinfDistNet)
    assert model.certificate == ("linf_hybrid" if head == "mlp" else "linf_margin")
    set_p(model, 8.0)
    assert current_p(model) == 8.0
    assert all(m.p == 8.0 for m in model.modules() if isinstance(m, LinfDistConv2d))
    set_p(model, math.inf)
    rebuilt = models.build(model.lipcert_spec["name"], **model.lipcert_spec["kwargs"])
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


@pytest.mark.parametrize("name,kwargs", [s for s in SMALL if s[0] != "linf_alexnet" and s[0] != "linf_mlp_hybrid"])
def test_plain_cnns_are_one_over_std_lipschitz_in_raw_pixels(name, kwargs):
    torch.manual_seed(0)
    model = models.build(name, **kwargs, num_classes=5, mean=[0.5] * kwargs["in_shape"][0], std=0.25).double().eval()
    for m in model.modules():
        if hasattr(m, "running_mean"):
            m.running_mean.normal_()
    a = torch.rand(24, *kwargs["in_shape"], dtype=torch.float64)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    assert model.linf_lipschitz() == pytest.approx(4.0)
    ratio = linf_ratio(model, a, b)
    assert (ratio <= 4.0 * (1 + 1e-12)).all() and ratio.max() > 0.5


def test_lenet_first_conv_padding_rule_and_errors():
    m28 = models.build("linf_lenet", in_shape=[1, 28, 28])
    m32 = models.build("linf_lenet", in_shape=[3, 32, 32])
    assert m28[1].padding == (2, 2) and m32[1].padding == (0, 0)
    with pytest.raises(ValueError, match="too small"):
        models.build("linf_lenet", in_shape=[1, 8, 8])
    with pytest.raises(ValueError, match="head must be"):
        models.build("linf_conv", in_shape=[1, 8, 8], head="cnn")
    with pytest.raises(ValueError, match="one entry per stage"):
        models.build("linf_vgg", channels=[4, 8], depths=[1])


def test_hybrid_certifies_through_dispatch():
    torch.manual_seed(0)
    model = models.build("linf_mlp_hybrid", in_shape=[1, 4, 4], num_classes=3, width=8, depth=2, head_hidden=6, mean=[0.5], std=0.25).eval()
    x = torch.rand(6, 1, 4, 4)
    y = model(x).argmax(1)
    cert = certify.certify(model, x, y)
    assert cert.method == "hybrid_interval+backbone_interval" and (cert.radius > 0).all()  # the best sound one
    assert model.feature_lipschitz() == pytest.approx(4.0)
    set_p(model, 8.0)
    assert model.feature_lipschitz() > 4.0 and model.feature_lipschitz(at_inf=True) == pytest.approx(4.0)
