"""Tiny trained models of every certificate kind and the mutations the red-team tests apply.

A mutation edits a model's tensors in place, as an edited checkpoint would (``load_state_dict``
bypasses every constructor check). Same-function mutations keep the logits of every input; the
others change the function, and a certificate must then be about the new tensors.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn

from lipcert import data, models
from lipcert.models import LinfVotingEnsemble
from lipcert.nn import InputNormalize, LinfDistConv2d, LinfDistLinear, set_p

from ..conftest import train_briefly

#: digits is 8x8 grey; a 600-image slice trains every model below in about a second
N_TRAIN = 600


@functools.lru_cache(maxsize=1)
def digits(split: str = "train", n: int = N_TRAIN) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load("digits", split)
    return x[:n], y[:n]


def _fit_linf(model: nn.Module, steps: int = 80) -> nn.Module:
    torch.manual_seed(0)
    x, y = digits()
    return train_briefly(model, x, y, steps=steps, lr=0.03, theta=0.3)


def _fit_ce(model: nn.Module, steps: int = 120, lr: float = 3e-3) -> nn.Module:
    x, y = digits()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


SHAPE = {"in_shape": [1, 8, 8], "num_classes": 10, "mean": [0.3], "std": 0.4}


@functools.lru_cache(maxsize=None)
def _base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":  # digits-linf's architecture, narrower
        return _fit_linf(models.build("linf_mlp", width=64, depth=3, **SHAPE))
    if kind == "conv":  # digits-linf-conv's
        return _fit_linf(models.build("linf_conv", width=4, fc=32, **SHAPE))
    if kind == "ensemble":  # digits-linf-ensemble's: 3 jointly trained MLPs
        return _fit_linf(models.build("linf_ensemble", member={"name": "linf_mlp", "width": 32, "depth": 3}, n=3, **SHAPE))
    if kind == "voting":  # digits-linf-voting's: a majority vote of 3 separately trained MLPs
        members = []
        for seed in range(3):
            torch.manual_seed(seed)
            members.append(_fit_linf(models.build("linf_mlp", width=32, depth=3, **SHAPE)))
        return LinfVotingEnsemble(members).eval()
    if kind == "hybrid":  # Net + MLP (digits-linf-mlp's)
        return _fit_linf(models.build("linf_mlp_hybrid", width=48, depth=2, head_hidden=32, **SHAPE))
    if kind == "lse":
        m = models.build("linf_mlp", width=48, depth=3, relaxation="lse", **SHAPE)
        return _fit_linf(m)
    if kind == "l2_relu":  # 4C3F with ReLU-theta, narrow (Huang21)
        return _fit_ce(models.build("4c3f", width=0.125, **SHAPE))
    if kind == "l2_maxmin":  # clipped MaxMin (Huang21 §3.3)
        return _fit_ce(models.build("4c3f", width=0.125, activation="clipped_maxmin", **SHAPE))
    if kind == "l2_maxmin_code":  # the Huang21 code's options: per-layer (a, b), its conv init, raw inputs
        return _fit_ce(models.build("4c3f", width=0.125, activation="clipped_maxmin", init="kaiming_out",
                                    theta_init=[[0.1, -0.1], [0.1, -0.15], [0.15, -0.15], [0.3, -0.3], [1.2, -1.2], [0.8, -0.5]],
                                    **{**SHAPE, "mean": [0.0], "std": 1.0}))
    if kind == "l2_res":  # Fazlyab23's sqrt(rho) residual MLP
        return _fit_ce(models.build("resmlp_l2", width=32, depth=2, **SHAPE))
    if kind == "l2_plain":  # an ordinary torch CNN lipcert did not build (certified with norm="l2")
        net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 32),
                            nn.ReLU(), nn.Linear(32, 10))
        return _fit_ce(net)
    raise KeyError(kind)


def base(kind: str) -> nn.Module:
    """A fresh copy of the trained model ``kind`` (so mutations never leak between tests)."""
    return copy.deepcopy(_base(kind)).eval()


LINF_KINDS = ["mlp", "conv", "ensemble", "voting", "hybrid", "lse"]
L2_KINDS = ["l2_relu", "l2_maxmin", "l2_res"]


# ---------------------------------------------------------------------------------- mutations
def _chains(model: nn.Module) -> list[nn.Module]:
    """The sequential parts that start with the input normalisation (ensemble members, backbones)."""
    if hasattr(model, "members"):
        return [c for m in model.members for c in _chains(m)]
    if hasattr(model, "backbone"):
        return [model.backbone]
    return [model]


def _first_weighted(chain: nn.Module) -> nn.Module:
    for m in chain.children():
        if isinstance(m, (LinfDistLinear, LinfDistConv2d, nn.Linear, nn.Conv2d)):
            return m
    raise AssertionError("no weighted layer")


@torch.no_grad()
def flip_sign_same_function(model: nn.Module, members: str = "all") -> nn.Module:
    """std -> -std and the first weighted layer's weight -> -weight, in every chain: the logits are
    unchanged (``||(x - m)/(-s) - (-w)|| = ||(x - m)/s - w||``; ``(-W)((x - m)/(-s)) = W((x - m)/s)``)."""
    chains = _chains(model)
    for chain in chains[:1] if members == "one" else chains:
        norm = next(m for m in chain.children() if isinstance(m, InputNormalize))
        norm.std.neg_()
        _first_weighted(chain).weight.neg_()
    return model


@torch.no_grad()
def negate_std(model: nn.Module) -> nn.Module:
    """std -> -std alone (a different function)."""
    for chain in _chains(model):
        next(m for m in chain.children() if isinstance(m, InputNormalize)).std.neg_()
    return model


@torch.no_grad()
def mixed_sign_std(model: nn.Module) -> nn.Module:
    """A tiny negative std (huge, sign-flipping scale): an ill-conditioned function."""
    for chain in _chains(model):
        next(m for m in chain.children() if isinstance(m, InputNormalize)).std.mul_(-1e-3)
    return model


@torch.no_grad()
def huge_weights(model: nn.Module) -> nn.Module:
    """Every weight of the last weighted layer scaled towards float32 overflow."""
    for chain in _chains(model):
        last = [m for m in chain.children() if isinstance(m, (LinfDistLinear, LinfDistConv2d, nn.Linear, nn.Conv2d))][-1]
        last.weight.mul_(1e36)
    if hasattr(model, "head"):
        model.head[-1].weight.mul_(1e36)
    return model


@torch.no_grad()
def tied_rows(model: nn.Module) -> nn.Module:
    """Class 1's output weights := class 0's (a permanent tie between two logits)."""
    if hasattr(model, "head"):
        layers = [model.head[-1]]
    else:
        layers = []
        for chain in _chains(model):
            layers.append([m for m in chain.children() if isinstance(m, (LinfDistLinear, nn.Linear))][-1])
    for last in layers:
        last.weight[1] = last.weight[0]
        if last.bias is not None:
            last.bias[1] = last.bias[0]
    return model


@torch.no_grad()
def l2_random_thresholds(model: nn.Module, seed: int = 0) -> nn.Module:
    """Per-element thresholds moved at random (by N(0, 0.3^2)), so that some have either sign and
    some pairs a < b, as a file may hold them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        for name in ("theta", "upper", "lower"):
            t = getattr(m, name, None)
            if isinstance(t, nn.Parameter):
                t.add_(0.3 * torch.randn(t.shape, generator=g))
    return model


@torch.no_grad()
def l2_negative_thresholds(model: nn.Module) -> nn.Module:
    """Activation thresholds outside the constraint set the optimiser keeps (theta < 0, a < b)."""
    for m in model.modules():
        if hasattr(m, "theta"):
            m.theta.copy_(-m.theta.abs() - 0.1)
        if hasattr(m, "upper") and hasattr(m, "lower"):
            a = m.upper.clone()
            m.upper.copy_(m.lower - 0.05)
            m.lower.copy_(a)
    return model


SAME_FUNCTION = {"flip_sign": flip_sign_same_function, "flip_sign_one_member": functools.partial(flip_sign_same_function, members="one")}
CHANGED = {"negate_std": negate_std, "tiny_negative_std": mixed_sign_std, "huge_weights": huge_weights, "tied_rows": tied_rows}


def set_inf(model: nn.Module) -> nn.Module:
    set_p(model, math.inf)
    return model
