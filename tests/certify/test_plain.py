"""Your own model (lipcert/certify/plain.py): an ordinary torch network lipcert did not build is
certified in l2 with every sound bound; PGD at 0.999 x each certified radius breaks nothing, and
layers the bounds do not support are refused by position and type."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipcert.attacks import pgd
from lipcert.certify import CertificationError, certify
from lipcert.certify.plain import PlainL2Net, as_l2_model
from lipcert.nn import InputNormalize
from lipcert.nn.activations import MaxMin
from tests.conftest import bands


def plain_cnn(act: str = "relu") -> nn.Sequential:
    a = (lambda: nn.ReLU()) if act == "relu" else (lambda: MaxMin())
    return nn.Sequential(
        InputNormalize([0.3], [0.35]),
        nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), a()),  # nested containers are flattened
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 16), a(), nn.Linear(16, 3),
    )


def fit(model: nn.Module, steps: int = 150, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    x, y = bands(96, seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return fit(plain_cnn())


def assert_pgd_cannot_break(model: nn.Module, x, y, radius, steps: int = 30) -> None:
    """PGD (l2) at 0.999 r_i never changes a certified prediction (per sample, its own radius)."""
    model.eval()
    for i in torch.nonzero(radius > 0).flatten().tolist():
        att = pgd(model, x[i : i + 1], y[i : i + 1], 0.999 * float(radius[i]), norm="l2", steps=steps, restarts=2, seed=i)
        assert bool(att.robust.all()), f"sample {i} broken inside its certified radius {float(radius[i])}"


@pytest.mark.parametrize("bound", ["global", "local-upper", "naive", "liplt", "best"])
def test_plain_sequential_every_sound_bound(trained, bound):
    x, y = bands(30, seed=5)
    cert = certify(trained, x, y, norm="l2", bound=bound, eps=[0.1, 0.3])
    assert cert.norm == "l2" and cert.bound == "upper"
    assert (cert.prediction == y).float().mean() == 1.0
    assert float((cert.radius > 0).float().mean()) >= 0.9, cert.radius  # a trained, separable task: non-trivial radii
    assert_pgd_cannot_break(trained, x, y, cert.radius)


def test_best_is_the_best_sound_radius(trained):
    x, y = bands(30, seed=6)
    best = certify(trained, x, y, norm="l2", bound="best", eps=[0.1, 0.3]).radius
    for b in ("global", "local-upper", "liplt", "naive"):
        other = certify(trained, x, y, norm="l2", bound=b, eps=[0.1, 0.3]).radius
        assert bool((best >= other * (1 - 1e-9)).all()), b


def test_maxmin_plain_model():
    torch.manual_seed(1)
    model = fit(plain_cnn("maxmin"), steps=100)
    x, y = bands(20, seed=7)
    cert = certify(model, x, y, norm="l2", bound="best", eps=[0.1])
    assert float((cert.radius > 0).float().mean()) >= 0.8
    assert_pgd_cannot_break(model, x, y, cert.radius, steps=20)


class Custom(nn.Module):
    """A user module with its own forward (functional relu, view-flatten), declared out of order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = nn.functional.relu(self.fc(h.view(h.size(0), -1)), inplace=True)
        return self.head(h)


def test_traced_module_reads_its_forward_not_its_declaration_order():
    torch.manual_seed(2)
    model = fit(Custom(), steps=100)
    net = as_l2_model(model, (1, 8, 8))
    assert isinstance(net, PlainL2Net) and [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "Flatten", "Linear",
                                                                              "ReLU", "Linear"]
    assert net[0] is model.conv and net[5] is model.head  # the same layers: the same weights
    model.train()
    as_l2_model(model, (1, 8, 8))
    assert all(m.training for m in model.modules())  # reading a model does not switch its mode
    x, y = bands(20, seed=8)
    a = certify(model, x, y, norm="l2", bound="global")
    b = certify(net, x, y, bound="global")
    assert torch.equal(a.radius, b.radius) and float((a.radius > 0).float().mean()) >= 0.8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return nn.functional.relu(self.conv(x))


def test_user_blocks_inside_a_sequential_are_traced():
    torch.manual_seed(3)
    model = nn.Sequential(Block(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    net = as_l2_model(model, (1, 8, 8))
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "Flatten", "Linear"] and net[0] is model[0].conv
    x, y = bands(8, seed=1)
    certify(model, x, y, norm="l2", bound="global")


class Residual(Custom):
    def forward(self, x):
        h = self.conv(x)
        return self.head(self.fc((h + torch.relu(h)).flatten(1)))


class Branchy(Custom):
    def forward(self, x):
        if x.sum() > 0:
            return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))
        return x


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)),
     r"layer 1 \(nn.BatchNorm2d\) is not supported by the l2 bounds; supported: nn.Linear"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)),
     r"layer 2 \(nn.MaxPool2d\) is not supported"),
    (nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh()), nn.Flatten(), nn.Linear(144, 3)),
     r"layer 1 \(nn.Tanh, '0.1'\) is not supported"),
    (nn.Sequential(nn.Conv2d(1, 4, 3, groups=1, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)),
     r"layer 0 \(nn.Conv2d\) is not supported by the l2 bounds with groups=1, dilation=\(2, 2\)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(6, 3)), r"layer 2 \(nn.Linear, '2'\) takes 6 features.*nn.Flatten"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), InputNormalize([0.0], [1.0]), nn.Linear(8, 3)),
     r"layer 2 \(lipcert.nn.InputNormalize\) is not supported by the l2 bounds after the first layer"),
    (nn.Sequential(nn.Flatten(0), nn.Linear(64, 3)), r"start_dim=0"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Softmax(dim=1)), r"layer 2 \(nn.Softmax\) .* drop it"),
    (nn.Sequential(nn.Conv2d(1, 4, 4, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)),
     r"padding='same'"),  # even kernel: asymmetric padding
    (Residual(), "not a straight chain of layers"),
    (Branchy(), "could not be traced with torch.fx"),
])
def test_unsupported_models_are_refused_naming_the_layer(model, message):
    x, y = bands(4, seed=0)
    with pytest.raises(CertificationError, match=message):
        certify(model, x, y, norm="l2")


def test_string_padding_is_read_as_numbers():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.ReLU(), nn.Conv2d(4, 4, 3, padding="valid"), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    net = as_l2_model(model, (1, 8, 8))
    assert net[0].padding == (1, 1) and net[0].weight is model[0].weight and net[2].padding == (0, 0)
    x, y = bands(6, seed=2)
    assert torch.equal(net(x), model(x))
    certify(model, x, y, norm="l2", bound="global")


def test_norm_must_be_l2_for_plain_models(trained):
    x, y = bands(4, seed=0)
    with pytest.raises(CertificationError, match="norm='l2'"):
        certify(trained, x, y)
    with pytest.raises(CertificationError, match="certificate=None"):
        certify(trained, x, y, norm="linf")
    net = as_l2_model(trained, (1, 8, 8))
    with pytest.raises(CertificationError, match="is certified in l2"):
        certify(net, x, y, norm="linf")
