"""Test banks of the contract tests: one small configuration per registered model, one or more
small instances per layer class of :mod:`lipcert.nn`.

Adding a model to ``lipcert.models`` or a layer class to ``lipcert.nn`` makes
``test_every_registered_model_has_a_bank_entry`` / ``test_every_layer_class_has_a_bank_entry`` fail
until it gets a line here; the contract tests then run on it without anything else to write.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipcert.losses import hinge_loss

# ------------------------------------------------------------------------------------- data
def bands(n: int, in_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """A well separated set of images in [0, 1]: class k is bright (+0.8) in its own band of columns,
    the rest is noise in [0, 0.1]; two classes differ by >= 0.7 in l-inf, so radii up to ~0.35 exist."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = in_shape
    y = torch.arange(n) % num_classes
    x = 0.1 * torch.rand(n, c, h, w, generator=g)
    band = max(1, w // num_classes)
    for k in range(num_classes):
        x[y == k, :, :, k * band : (k + 1) * band] += 0.8
    return x.clamp(0, 1), y


# ------------------------------------------------------------------------------------- losses
def _hinge(logits: Tensor, y: Tensor) -> Tensor:
    # Zhang21 Eq. 6 with a threshold in logit units (the l-inf families' training loss)
    return hinge_loss(logits, y, 1.0)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


#: training loss per certificate kind (a model family is what its certificate is); a new kind in
#: ``lipcert.certify.CERTIFIERS`` needs a line here (``test_every_certificate_kind_has_a_loss``)
FAMILY_LOSS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "linf_margin": _hinge,
    "linf_hybrid": _hinge,
    "linf_ensemble": _hinge,
    "linf_voting": _hinge,  # through the vote scores' averaged-logit gradient (LinfVotingEnsemble)
    "l2_lipschitz": _ce,
}


# ------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelCase:
    """Small keyword arguments for ``models.build(name, **kwargs)`` and how to fit it briefly.

    ``kwargs`` must contain ``in_shape`` and ``num_classes``. ``setup(model, x, y)`` (optional)
    sets weights a construction defines before training (models whose registry weights are zero).
    ``certify_kwargs`` are passed to ``lipcert.certify.certify`` (e.g. ``eps`` for the l2 local bound).
    ``attack`` overrides the budget of the attack (``tests.soundness.attack.broken_strong``'s
    ``steps`` / ``restarts`` / ``buckets``) for models too large for the full one in the default run.
    """

    kwargs: dict
    steps: int = 40
    lr: float = 0.02
    n_train: int = 48
    n_test: int = 24
    certify_kwargs: dict = field(default_factory=dict)
    setup: Callable[[nn.Module, Tensor, Tensor], None] | None = None
    attack: dict = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.kwargs["in_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.kwargs["num_classes"])


def _nearest_neighbour_setup(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """The registry model has zero weights until Zhang22 Thm 3.2's construction sets them."""
    from lipcert.analysis.separation import nearest_neighbour_net

    model.load_state_dict(nearest_neighbour_net(x, y, num_classes=3, layers=2).state_dict())


_SH = {"in_shape": [1, 8, 8], "num_classes": 3, "mean": [0.3], "std": 0.4}
_L2 = {"lr": 5e-3, "certify_kwargs": {"eps": [0.1]}}

MODEL_BANK: dict[str, ModelCase] = {
    "4c3f": ModelCase({**_SH, "width": 0.125}, **_L2),
    "6c2f": ModelCase({**_SH, "width": 0.125}, **_L2),
    "crm-6c2f": ModelCase({**_SH, "width": 0.125}, **_L2),
    # three unpadded stride-2 4x4 convolutions need inputs of at least 22 x 22
    "8c2f": ModelCase({**_SH, "in_shape": [1, 22, 22], "width": 0.0625}, **_L2),
    # fixed channel counts (96 ... 384, 3.7M parameters): the smallest input its pooling allows, few
    # steps, a shorter attack (PGD 10 steps + APGD-CE / APGD-T on one radius bucket)
    "linf_alexnet": ModelCase({**_SH, "in_shape": [1, 16, 16], "fc": [16]}, steps=12, n_train=24, n_test=9,
                              attack={"steps": 10, "restarts": 1, "buckets": 1}),
    "linf_conv": ModelCase({**_SH, "width": 4, "fc": 32}, steps=60),
    "linf_ensemble": ModelCase({**_SH, "member": {"name": "linf_mlp", "width": 16, "depth": 2}, "n": 2}),
    "linf_lenet": ModelCase({**_SH, "in_shape": [1, 16, 16], "fc": [16]}, steps=60),
    "linf_mlp": ModelCase({**_SH, "width": 32, "depth": 3}),
    "linf_mlp_hybrid": ModelCase({**_SH, "width": 32, "depth": 2, "head_hidden": 16}),
    "linf_nearest_neighbour": ModelCase({"in_shape": [1, 8, 8], "num_classes": 3, "widths": [48]}, steps=3, lr=1e-3,
                                        setup=_nearest_neighbour_setup),
    "linf_vgg": ModelCase({**_SH, "channels": [4, 8], "depths": [1, 1], "pools": [True, False], "fc": [16]}),
    "resmlp_l2": ModelCase({**_SH, "width": 16, "depth": 2}, lr=5e-3),
}


# ------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerCase:
    """One small instance of a layer class (built in float64, eval mode) and its input shape.

    ``l2_constants(layer)`` names the l2 Lipschitz bounds the layer (or lipcert's l2 bounds for it)
    state, when it states any besides those it declares itself (``linf_lipschitz()`` for l-inf
    layers, ``lipschitz`` and the slope bounds for activations). ``scale`` multiplies the random
    inputs (so thresholds and argmaxes are exercised on both sides).
    """

    id: str
    make: Callable[[torch.Generator], nn.Module]
    in_shape: tuple[int, ...]
    l2_constants: Callable[[nn.Module], dict[str, float]] | None = None
    scale: float = 1.0
    elementwise: bool = False  # an elementwise activation: difference quotients within its slope bounds


def _randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _init(layer: nn.Module, g: torch.Generator, std: float = 1.0) -> nn.Module:
    """Random parameters (and running means) from ``g``, in float64, eval mode."""
    layer = layer.to(torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(_randn(g, *p.shape) * std)
        for name, b in layer.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(_randn(g, *b.shape))
    return layer.eval()


def _keep_init(layer: nn.Module, g: torch.Generator) -> nn.Module:
    """Parameters as the constructor initialised them (seeded from ``g``), float64, eval mode."""
    return layer.to(torch.float64).eval()


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[torch.Generator], nn.Module]:
    def make(g: torch.Generator) -> nn.Module:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        return _keep_init(factory(), g)

    return make


def _normalize(g: torch.Generator) -> nn.Module:
    from lipcert.nn import InputNormalize

    std = (torch.rand(3, generator=g, dtype=torch.float64) * 0.9 + 0.1).tolist()
    mean = torch.rand(3, generator=g, dtype=torch.float64).tolist()
    return InputNormalize(mean, std).to(torch.float64).eval()


def _linf_linear(**kw) -> Callable[[torch.Generator], nn.Module]:
    from lipcert.nn import LinfDistLinear

    return lambda g: _init(LinfDistLinear(12, 7, **kw), g)


def _linf_conv(**kw) -> Callable[[torch.Generator], nn.Module]:
    from lipcert.nn import LinfDistConv2d

    return lambda g: _init(LinfDistConv2d(4, 6, **kw), g)


def _residual(inner: Callable[[], nn.Module], c: float) -> Callable[[torch.Generator], nn.Module]:
    from lipcert.nn import LinfDistResidual

    return lambda g: _init(LinfDistResidual(inner(), c), g)


def _mean_shift(g: torch.Generator) -> nn.Module:
    from lipcert.nn import MeanShiftNorm

    return _init(MeanShiftNorm(4), g)


def _scaled_linear(g: torch.Generator) -> nn.Module:
    from lipcert.nn import ScaledLinear

    return _init(ScaledLinear(10, 6), g)


def _scaled_linear_l2(layer: nn.Module) -> dict[str, float]:
    from lipcert.bounds.norms import dense_norm_upper

    return {"||effective_weight||_2 (dense_norm_upper)": dense_norm_upper(layer.effective_weight(torch.float64))}


def _aol(g: torch.Generator) -> nn.Module:
    from lipcert.nn.aol import AOLLinear

    return _init(AOLLinear(10, 6), g)


def _aol_l2(layer: nn.Module) -> dict[str, float]:
    from lipcert.bounds.layers import affine_op

    return {"AOL: ||W D||_2 <= 1 (Prach & Lampert 2022, Thm 1)": 1.0,
            "affine_op(...).norm_upper()": affine_op(layer, (layer.in_features,)).norm_upper()}


def _activation(name: str, shape: tuple[int, ...], spread: float = 1.0) -> Callable[[torch.Generator], nn.Module]:
    """``make_activation(name, shape)`` with thresholds moved randomly around their init (kept on the
    constraint set by ``project_``, as training does)."""
    from lipcert.nn.activations import make_activation

    def make(g: torch.Generator) -> nn.Module:
        act = make_activation(name, shape).to(torch.float64)
        with torch.no_grad():
            for p in act.parameters():
                p.add_(_randn(g, *p.shape) * spread)
        act.project_()
        return act.eval()

    return make


def _sqrt_rho(features: int, inner: int | None, rho: float, t_rule: str) -> Callable[[torch.Generator], nn.Module]:
    from lipcert.nn.residual_l2 import SqrtRhoResidual

    def make(g: torch.Generator) -> nn.Module:
        layer = SqrtRhoResidual(features, inner, "relu", rho=rho, t_rule=t_rule).to(torch.float64)
        with torch.no_grad():
            layer.weight.copy_(_randn(g, *layer.weight.shape) / math.sqrt(features))
            layer.bias.copy_(_randn(g, *layer.bias.shape) * 0.3)
            if t_rule == "sll":
                layer.log_q.copy_(_randn(g, *layer.log_q.shape))
        return layer.eval()

    return make


def _sqrt_rho_l2(layer: nn.Module) -> dict[str, float]:
    """Fazlyab23 Prop. 3.1's sqrt(rho), and the per-stage naive bound (Fazlyab23 Eq. 13) LipLT reads off the layer."""
    from lipcert.bounds.ltnet import LTNet

    net = LTNet.from_model(nn.Sequential(layer, nn.Linear(layer.features, 2).to(torch.float64)), in_shape=(layer.features,))
    return {"sqrt(rho) (Fazlyab23 Prop. 3.1)": float(layer.rho().detach().sqrt()), "LTNet stage naive (Fazlyab23 Eq. 13)": net.stages[0].naive()}


def _cases() -> dict[type, list[LayerCase] | str]:
    from lipcert.nn import (
        Flatten, InputNormalize, LinfDistConv2d, LinfDistLinear, LinfDistResidual, MaxPool2d, MeanShiftNorm, Negate,
        ScaledLinear,
    )
    from lipcert.nn.activations import Activation, ClippedMaxMin, MaxMin, ReLU, ReLUTheta
    from lipcert.nn.aol import AOLLinear
    from lipcert.nn.residual_l2 import SqrtRhoResidual

    return {
        Activation: "abstract base class of the l2 activations (its subclasses have entries)",
        ReLU: [LayerCase("relu", _activation("relu", (6,)), (6,), elementwise=True)],
        ReLUTheta: [
            LayerCase("relu_theta_flat", _activation("relu_theta", (6,)), (6,), scale=2.0, elementwise=True),
            LayerCase("relu_theta_chw", _activation("relu_theta", (2, 3, 3), 0.5), (2, 3, 3), scale=2.0, elementwise=True),
        ],
        MaxMin: [
            LayerCase("maxmin_flat", _activation("maxmin", (8,)), (8,)),
            LayerCase("maxmin_chw", _activation("maxmin", (4, 3, 3)), (4, 3, 3)),
        ],
        ClippedMaxMin: [
            LayerCase("clipped_maxmin_flat", _activation("clipped_maxmin", (8,)), (8,), scale=2.0),
            LayerCase("clipped_maxmin_chw", _activation("clipped_maxmin", (4, 2, 2), 0.5), (4, 2, 2), scale=2.0),
        ],
        InputNormalize: [LayerCase("input_normalize", _normalize, (3, 4, 4))],
        Negate: [LayerCase("negate", lambda g: Negate().double(), (5,))],
        Flatten: [LayerCase("flatten", lambda g: Flatten().double(), (2, 3, 3))],
        MaxPool2d: [
            LayerCase("maxpool_2", lambda g: MaxPool2d(2).double(), (2, 4, 4)),
            LayerCase("maxpool_3s2p1", lambda g: MaxPool2d(3, 2, padding=1).double(), (2, 5, 5)),
        ],
        MeanShiftNorm: [
            LayerCase("mean_shift_flat", _mean_shift, (4,)),
            LayerCase("mean_shift_chw", _mean_shift, (4, 3, 3)),
        ],
        ScaledLinear: [LayerCase("scaled_linear", _scaled_linear, (10,), l2_constants=_scaled_linear_l2)],
        AOLLinear: [LayerCase("aol_linear", _aol, (10,), l2_constants=_aol_l2)],
        LinfDistLinear: [
            LayerCase("linf_linear_inf", _linf_linear(bias=True), (12,)),
            LayerCase("linf_linear_identity_init", _seeded(lambda: LinfDistLinear(7, 12, identity_init=True)), (7,)),
            LayerCase("linf_linear_lp8", _linf_linear(p=8.0), (12,)),
            LayerCase("linf_linear_lp2", _linf_linear(p=2.0, bias=True), (12,)),
            LayerCase("linf_linear_lse8", _linf_linear(p=8.0, relaxation="lse"), (12,)),
        ],
        LinfDistConv2d: [
            LayerCase("linf_conv_inf", _linf_conv(kernel_size=3, padding=1, bias=True), (4, 5, 5)),
            LayerCase("linf_conv_s2_groups", _linf_conv(kernel_size=3, stride=2, padding=1, groups=2), (4, 6, 6)),
            LayerCase("linf_conv_pad_value", _linf_conv(kernel_size=(3, 2), padding=(1, 2), pad_value=0.7), (4, 4, 4)),
            LayerCase("linf_conv_lp8", _linf_conv(kernel_size=2, p=8.0), (4, 4, 4)),
            LayerCase("linf_conv_lse4", _linf_conv(kernel_size=3, padding=1, p=4.0, relaxation="lse"), (4, 4, 4)),
        ],
        LinfDistResidual: [
            LayerCase("residual_linear", _residual(lambda: LinfDistLinear(9, 9, bias=True), 0.5), (9,)),
            LayerCase("residual_conv", _residual(lambda: LinfDistConv2d(3, 3, 3, padding=1), 0.3), (3, 4, 4)),
            LayerCase("residual_c0", _residual(lambda: LinfDistLinear(6, 6), 0.0), (6,)),
            LayerCase("residual_lp8", _residual(lambda: LinfDistLinear(9, 9, p=8.0), 0.4), (9,)),
        ],
        SqrtRhoResidual: [
            LayerCase("sqrt_rho_aol", _sqrt_rho(8, None, 1.0, "aol"), (8,), l2_constants=_sqrt_rho_l2),
            LayerCase("sqrt_rho_aol_rho2_wide", _sqrt_rho(6, 10, 2.0, "aol"), (6,), l2_constants=_sqrt_rho_l2),
            LayerCase("sqrt_rho_sll_rho05", _sqrt_rho(8, 5, 0.5, "sll"), (8,), l2_constants=_sqrt_rho_l2),
        ],
    }


LAYER_BANK: dict[type, list[LayerCase] | str] = _cases()


# ------------------------------------------------------------------------------------- l2 operators
@dataclass(frozen=True)
class OperatorCase:
    """An affine torch layer (optionally after an ``InputNormalize``, which the l2 bounds fold into
    the first operator) that lipcert's l2 bounds read; ``norm_upper`` must bound its l2 gain."""

    id: str
    make: Callable[[torch.Generator], nn.Sequential]
    in_shape: tuple[int, ...]


def _op(layer: Callable[[], nn.Module], normalize: int = 0, flatten: bool = False) -> Callable[[torch.Generator], nn.Sequential]:
    from lipcert.nn import Flatten, InputNormalize

    def make(g: torch.Generator) -> nn.Sequential:
        mods = []
        if normalize:
            std = (torch.rand(normalize, generator=g, dtype=torch.float64) * 0.8 + 0.2).tolist()
            mods.append(InputNormalize([0.5] * normalize, std))
        if flatten:
            mods.append(Flatten())
        mods.append(_init(layer(), g, std=0.5))
        return nn.Sequential(*mods).to(torch.float64).eval()

    return make


OPERATOR_BANK: list[OperatorCase] = [
    OperatorCase("linear", _op(lambda: nn.Linear(12, 7)), (12,)),
    OperatorCase("linear_normalized_chw", _op(lambda: nn.Linear(18, 5), normalize=2, flatten=True), (2, 3, 3)),
    OperatorCase("conv_3x3_p1", _op(lambda: nn.Conv2d(2, 3, 3, padding=1)), (2, 5, 5)),
    OperatorCase("conv_4x4_s2_p1_normalized", _op(lambda: nn.Conv2d(3, 4, 4, stride=2, padding=1), normalize=3), (3, 6, 6)),
    OperatorCase("aol_normalized_chw", _op(lambda: __import__("lipcert.nn.aol", fromlist=["AOLLinear"]).AOLLinear(18, 5),
                                           normalize=2, flatten=True), (2, 3, 3)),
    OperatorCase("conv_3x3_s2_p0", _op(lambda: nn.Conv2d(2, 2, 3, stride=2)), (2, 7, 7)),
]


# ------------------------------------------------------------------------------------- tight l2 models
@dataclass(frozen=True)
class TightCase:
    """An l2 model on which some certificates are (nearly) exact: its certified radius is the
    distance to the nearest decision boundary, so an attack a little beyond it flips most samples.

    On a loose model an inflated radius (a doubled local radius, say) can still survive the attack
    at 0.999 x the radius; on these it cannot. ``make()`` returns (model, x, y); ``tight`` names the
    ``bound`` values that are exact on it (``test_tight_l2`` checks that an attack at
    ``TIGHT_FACTOR`` x their radii flips at least ``TIGHT_SHARE`` of the certified samples, and that
    0.999 x flips none); ``certify_kwargs`` go to ``lipcert.certify.certify``.
    """

    make: Callable[[], tuple[nn.Module, Tensor, Tensor]]
    tight: tuple[str, ...]
    certify_kwargs: dict = field(default_factory=dict)


TIGHT_FACTOR = 1.5
TIGHT_SHARE = 0.5

_TIGHT_SHAPE = (1, 8, 8)


def _interior(n: int, seed: int) -> Tensor:
    """Inputs well inside [0, 1] (0.5 +- ~0.05 per pixel), so that the box never stops an attack
    at the small radii of the tight models."""
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.05 * torch.randn(n, *_TIGHT_SHAPE, generator=g)).clamp(0.2, 0.8)


def _labelled(model: nn.Module, n: int = 24, seed: int = 1) -> tuple[nn.Module, Tensor, Tensor]:
    """The model and inputs labelled by its own prediction (every sample correct)."""
    x = _interior(n, seed)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return model.eval(), x, y


def _linear_l2() -> tuple[nn.Module, Tensor, Tensor]:
    """One linear layer (after the input normalisation): every Lipschitz bound of ``z_y - z_j`` is
    ``||w_y - w_j||`` exactly, so the global, naive, LipLT and local radii are the exact distance to
    the decision boundary."""
    from lipcert.models.mcnf import MCNF
    from lipcert.nn import Flatten, InputNormalize

    torch.manual_seed(0)
    d = math.prod(_TIGHT_SHAPE)
    lin = nn.Linear(d, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, d) / 8)
        lin.bias.zero_()
    return _labelled(MCNF(InputNormalize([0.5], 0.25), Flatten(), lin, in_shape=_TIGHT_SHAPE))


def _dead_rows_l2() -> tuple[nn.Module, Tensor, Tensor]:
    """Linear(d, d + m), ReLU, Linear(d + m, 3): the first d hidden units copy the input plus 3
    (always active), the m others have large random rows and bias -1000 (never active) and no
    weight in the logit layer. The network is linear near every input, ``4 A (x - 0.5)``; its
    global bounds count the dead rows (about 10x too large), Huang21's local bound masks them out
    and is exact (Huang21 Eq. 6: reduced matrices); LipLT comes within ~20 % (``W_1 W_0 = A``)."""
    from lipcert.models.mcnf import MCNF
    from lipcert.nn import Flatten, InputNormalize
    from lipcert.nn.activations import ReLU

    torch.manual_seed(0)
    d, m = math.prod(_TIGHT_SHAPE), 64
    first, last = nn.Linear(d, d + m), nn.Linear(d + m, 3)
    with torch.no_grad():
        first.weight.copy_(torch.cat([torch.eye(d), 5 * torch.randn(m, d) / math.sqrt(d)]))
        first.bias.copy_(torch.cat([torch.full((d,), 3.0), torch.full((m,), -1000.0)]))
        a = torch.randn(3, d) / 8
        last.weight.copy_(torch.cat([a, torch.zeros(3, m)], dim=1))
        last.bias.copy_(-3 * a.sum(1))  # logits A (normalised x): the offset 3 cancels
    model = MCNF(InputNormalize([0.5], 0.25), Flatten(), first, ReLU(), last, in_shape=_TIGHT_SHAPE)
    return _labelled(model)


#: the local bound is computed for every sample (no PGD pre-filter) on a ball larger than every radius
_EVERY_LOCAL = {"eps": [0.3], "skip_attack": False}

TIGHT_L2_BANK: dict[str, TightCase] = {
    "linear": TightCase(_linear_l2, ("best", "global", "local-upper", "naive", "liplt"), _EVERY_LOCAL),
    "dead_rows": TightCase(_dead_rows_l2, ("best", "local-upper", "liplt"), _EVERY_LOCAL),
}
