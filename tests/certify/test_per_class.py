"""The per-class LipLT certificate (``--bound liplt-per-class``; the authors' ``--perClassLipschitz``):
radius min_i (z_y - z_i) / (L_y + L_i) -- never above the pairwise radius (L_ij <= L_i + L_j),
equal to a plain reference up to rounding, and unbroken by attacks at 0.999 x the radius."""

from __future__ import annotations

import copy

import pytest
import torch

from lipcert.bounds.liplt import liplt
from lipcert.certify import certify
from lipcert.certify.pairwise import PAIRWISE_CHOICES

from ..bounds.liplt_helpers import blobs, convnet, train_ce
from .test_pairwise import CASES, l2_attack


def _bn_case():
    from ..bounds.test_batchnorm_fold import MODEL, X, Y

    return MODEL, X, Y


ALL = {**CASES, "batchnorm": _bn_case()}


def test_registered_as_a_bound():
    from lipcert.cli.certify_cmd import L2_BOUND_NAMES

    assert "liplt-per-class" in PAIRWISE_CHOICES and "liplt-per-class" in L2_BOUND_NAMES


@pytest.mark.parametrize("case", sorted(ALL))
def test_per_class_radius_is_the_reference_and_below_pairwise(case):
    model, x, y = ALL[case]
    cert = certify(model, x, y, bound="liplt-per-class")
    pair = certify(model, x, y, bound="liplt")
    assert cert.bound == "upper" and cert.method == "l2_pairwise_liplt_per_class"
    assert (cert.radius <= pair.radius * (1 + 1e-12)).all()
    # plain reference: min_i (z_y - z_i) / (L_y + L_i) from float64 logits and the per-class bounds
    cls = liplt(model).per_class
    with torch.no_grad():
        z = copy.deepcopy(model).double().eval()(x.double())
    ref = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for n in range(x.shape[0]):
        yy = int(y[n])
        for i in range(z.shape[1]):
            if i != yy:
                ref[n] = min(ref[n], (z[n, yy] - z[n, i]) / (cls[yy] + cls[i]))
    ref = ref.clamp_min(0)
    ok = cert.radius > 0
    assert ok.float().mean() > 0.3, "the test needs certified samples"
    assert (cert.radius <= ref).all()
    # below it by the rounding slack of the logits (float32 inference in the ball; larger with
    # BatchNorm, whose conv output is rounded before the mean is subtracted)
    assert (cert.radius[ok] >= ref[ok] * (1 - (1e-2 if case == "batchnorm" else 1e-3))).all()
    assert float(cert.radius[ok].mean()) < float(pair.radius[ok].mean())  # the pairwise mode gains here


@pytest.mark.parametrize("case", sorted(ALL))
def test_attack_at_0999_radius_never_flips(case):
    model, x, y = ALL[case]
    cert = certify(model, x, y, bound="liplt-per-class")
    idx = (cert.radius > 0).nonzero().flatten()
    broken = l2_attack(model, x[idx], y[idx], cert.radius[idx].float() * 0.999)
    assert not broken.any(), f"samples {idx[broken].tolist()} certified but broken"


def test_small_net_brute_force_pairs():
    """A 2-class-pair check on a tiny dense net: the per-class constants dominate every random
    difference quotient of each logit."""
    torch.manual_seed(0)
    x, y = blobs(80, (1, 4, 4), 3, spread=0.1)
    model = train_ce(convnet(in_shape=(1, 4, 4), channels=(2, 3), hidden=8, classes=3), x, y, steps=40)
    res = liplt(model)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4000, 1, 4, 4, generator=g, dtype=torch.float64)
    b = a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        dz = m64(a) - m64(b)
    dist = (a - b).flatten(1).norm(dim=1)
    for i in range(3):
        assert float((dz[:, i].abs() / dist).max()) <= float(res.per_class[i])
