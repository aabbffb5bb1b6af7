"""mCnF CNNs exactly as Huang21 App. C.1, built by name, with normalisation inside and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lipcert import checkpoint, models
from lipcert.models.mcnf import MCNF
from lipcert.nn.activations import ClippedMaxMin, MaxMin, ReLU, ReLUTheta
from lipcert.nn.common import InputNormalize
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

SPEC = {  # Huang21 App. C.1: C(c, k, s, p) ... F(c)
    "4c3f": ((1, 28, 28), [(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512, 10], 10),
    "6c2f": ((3, 32, 32), [(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 10], 10),
    "8c2f": (
        (3, 64, 64),
        [(64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1), (128, 4, 2, 0), (256, 3, 1, 1), (256, 4, 2, 0)],
        [256, 200],
        200,
    ),
}


@pytest.mark.parametrize("arch", list(SPEC))
def test_architecture_is_exactly_appendix_c1(arch):
    in_shape, convs, fcs, classes = SPEC[arch]
    model = models.build(arch, in_shape=list(in_shape), num_classes=classes)
    assert isinstance(model, MCNF) and model.certificate == "l2_lipschitz" and model.in_shape == in_shape
    assert isinstance(model[0], InputNormalize)
    got_convs = [(m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in model if isinstance(m, nn.Conv2d)]
    got_fcs = [m.out_features for m in model if isinstance(m, nn.Linear)]
    assert got_convs == convs and got_fcs == fcs
    acts = [m for m in model if isinstance(m, ReLUTheta)]
    assert len(acts) == len(convs) + len(fcs) - 1  # after every layer but the last (Huang21 C.1)
    assert isinstance(list(model)[-1], nn.Linear)
    if arch != "8c2f":  # 8C2F at full size is slow to run on CPU; shapes are checked by construction
        assert model(torch.rand(2, *in_shape)).shape == (2, classes)


@pytest.mark.parametrize("act,cls", [("relu", ReLU), ("relu_theta", ReLUTheta), ("maxmin", MaxMin), ("clipped_maxmin", ClippedMaxMin)])
def test_activation_by_name_and_width(act, cls):
    model = models.build("4c3f", in_shape=[1, 28, 28], activation=act, width=0.25, theta_init=2.0)
    assert all(isinstance(m, cls) for m in model if not isinstance(m, (nn.Conv2d, nn.Linear, InputNormalize, nn.Flatten)))
    convs = [m.out_channels for m in model if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16]
    if act == "relu_theta":
        assert model[2].theta.shape == (8, 28, 28) and float(model[2].theta.detach().mean()) == 2.0  # per element
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_maxmin_keeps_channel_counts_even():
    model = models.build("4c3f", in_shape=[1, 28, 28], activation="maxmin", width=0.1)
    assert all(m.out_channels % 2 == 0 for m in model if isinstance(m, nn.Conv2d))


def test_normalisation_inside_and_checkpoint_round_trip(tmp_path):
    model = models.build("6c2f", in_shape=[3, 32, 32], width=0.25, mean=[0.4, 0.5, 0.6], std=0.2)
    x = torch.rand(2, 3, 32, 32)
    norm = model[0]
    torch.testing.assert_close(norm(x), (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / 0.2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    checkpoint.save_atomic(checkpoint.model_payload(model, kind="model"), tmp_path / "m.pt")
    back = checkpoint.load_model(tmp_path / "m.pt")
    torch.testing.assert_close(back(x), model.eval()(x))
    assert back.in_shape == (3, 32, 32)


def test_projection_and_errors():
    model = models.build("4c3f", in_shape=[1, 28, 28], width=0.25)
    with torch.no_grad():
        model[2].theta.fill_(-1.0)
    model.project_()
    assert float(model[2].theta.detach().min()) == 0.0
    with pytest.raises(ValueError, match="does not fit"):
        models.build("8c2f", in_shape=[3, 8, 8])
    with pytest.raises(ValueError, match="unknown activation"):
        models.build("4c3f", activation="gelu")
    assert {"4c3f", "6c2f", "8c2f"} <= set(models.available())


def test_crm_6c2f_is_the_004_authors_network():
    """Fazlyab23's authors' "6C2F" (their public code): three stride-2 convolutions, 1024 features,
    F512, F10 -- another network than Huang21's 6C2F; 733,866 parameters on CIFAR-10."""
    model = models.build("crm-6c2f", in_shape=[3, 32, 32], activation="relu", mean=[0.5, 0.5, 0.5], std=0.5)
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]) for m in model if isinstance(m, nn.Conv2d)]
    assert convs == [(3, 32, 3, 1, 1), (32, 32, 4, 2, 1), (32, 64, 3, 1, 1), (64, 64, 4, 2, 1), (64, 64, 3, 1, 1), (64, 64, 4, 2, 1)]
    fcs = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert fcs == [(1024, 512), (512, 10)]
    expected = sum(o * i * k * k + o for i, o, k, _, _ in convs) + sum(i * o + o for i, o in fcs)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected == 733_866
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    tiny = models.build("crm-6c2f", in_shape=[3, 64, 64], num_classes=200, width=0.25)  # their 6C2FTinyImagenet shape
    assert [m.in_features for m in tiny if isinstance(m, nn.Linear)] == [16 * 8 * 8, 128]


def test_per_layer_thresholds_init_and_raw_inputs():
    """Huang21 code options: ``theta_init`` per activation layer (clipped MaxMin: t or [a, b]),
    ``init="kaiming_out"`` on every convolution, raw inputs with mean 0 / std 1."""
    pairs = [[0.1, -0.1], [0.1, -0.15], [0.15, -0.15], [0.15, -0.15], [0.2, -0.2], [0.3, -0.3], 1.2]
    torch.manual_seed(0)
    net = models.build("6c2f", in_shape=[3, 32, 32], activation="clipped_maxmin", theta_init=pairs, init="kaiming_out",
                       mean=[0.0], std=1.0)
    acts = [m for m in net if isinstance(m, ClippedMaxMin)]
    assert len(acts) == 7
    for act, want in zip(acts, pairs):
        a, b = want if isinstance(want, list) else (want, -want)
        assert torch.equal(act.upper, torch.full_like(act.upper, a)) and torch.equal(act.lower, torch.full_like(act.lower, b))
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    big = torch.cat([c.weight.flatten() for c in convs if c.out_channels == 64 and c.kernel_size == (3, 3)])
    assert big.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.03)  # N(0, sqrt(2 / (k^2 C_out)))
    assert all(torch.equal(c.bias, torch.zeros_like(c.bias)) for c in convs)
    dense = [m for m in net if isinstance(m, nn.Linear)]
    assert all(d.bias.abs().sum() > 0 for d in dense)  # PyTorch's default kept, as the code
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(net[0](x), x)  # raw [0, 1] inputs: the normalisation is the identity
    relu = models.build("4c3f", activation="relu_theta", theta_init=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert [float(m.theta.flatten()[0]) for m in relu if isinstance(m, ReLUTheta)] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="one threshold per activation layer"):
        models.build("4c3f", theta_init=[1.0, 2.0])
    with pytest.raises(ValueError, match="clipped_maxmin only"):
        models.build("4c3f", activation="relu_theta", theta_init=[[1.0, -1.0]] * 6)
    with pytest.raises(ValueError, match="unknown init"):
        models.build("4c3f", init="xavier")
    spec = net.lipcert_spec
    again = models.build(spec["name"], **spec["kwargs"])
    assert torch.equal(again[2].upper, net[2].upper)
