"""Majority-vote ensembles (lipcert.certify.voting): the radius formula against brute force over
every adversarial vote, soundness on trained digits members, and the bounds the radius obeys."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lipcert import certify, data, models
from lipcert.attacks import pgd
from lipcert.certify import CertificationError, voting_radius
from lipcert.models import LinfEnsemble, LinfVotingEnsemble
from tests.linf_family_helpers import train_model_briefly


def _winner(votes: list[int], k: int) -> int:
    counts = [votes.count(c) for c in range(k)]
    return counts.index(max(counts))  # lowest index among the tied


def _flippable(radii: list[float], votes: list[int], k: int, s: float) -> bool:
    """Can some vote of the members that are not certified at radius s (r_i < s) change the winner?"""
    target = _winner(votes, k)
    free = [i for i, r in enumerate(radii) if r < s]
    for choice in itertools.product(range(k), repeat=len(free)):
        v = list(votes)
        for i, c in zip(free, choice):
            v[i] = c
        if _winner(v, k) != target:
            return True
    return False


def test_radius_formula_matches_brute_force_over_adversarial_votes():
    g = torch.Generator().manual_seed(0)
    cases = 0
    for _ in range(300):
        m = int(torch.randint(1, 6, (1,), generator=g))
        k = int(torch.randint(2, 5, (1,), generator=g))
        votes = torch.randint(0, k, (m,), generator=g)
        radii = torch.rand(m, generator=g, dtype=torch.float64).mul(4).floor().div(4)  # ties and zeros
        pred, radius = voting_radius(radii[:, None], votes[:, None], k)
        pred, r = int(pred), float(radius)
        rl, vl = radii.tolist(), votes.tolist()
        assert pred == _winner(vl, k)
        assert r == 0 or r in rl  # always a member's radius
        if r > 0:
            for s in {*(x for x in rl if 0 < x <= r), r, r * 0.5}:
                assert not _flippable(rl, vl, k, s), (rl, vl, k, s)
            cases += 1
        beyond = r * (1 + 1e-9) if r > 0 else 1e-12  # just above the radius (or any positive one)
        assert _flippable(rl, vl, k, beyond), (rl, vl, k, r)  # and the radius is the largest
    assert cases > 50


def test_radius_bounds_and_single_member():
    g = torch.Generator().manual_seed(1)
    radii = torch.rand(5, 400, generator=g, dtype=torch.float64)
    radii = torch.where(torch.rand(5, 400, generator=g) < 0.4, torch.zeros_like(radii), radii)  # uncertified members
    votes = torch.randint(0, 3, (5, 400), generator=g)
    pred, r = voting_radius(radii, votes, 3)
    for_pred = torch.where(votes == pred[None], radii, torch.zeros_like(radii))
    assert (r <= for_pred.amax(0)).all()  # never above the best member that votes for the winner
    assert (r > 0).any() and (r == 0).any()
    # every member certified and voting alike: the vote holds while a majority of them keeps its vote
    same, _ = voting_radius(radii[:, :1].expand(5, 7).abs() + 0.1, torch.zeros(5, 7, dtype=torch.long), 3)
    assert (same == 0).all()
    _, r_same = voting_radius(radii[:, :7] + 0.1, torch.zeros(5, 7, dtype=torch.long), 3)
    torch.testing.assert_close(r_same, (radii[:, :7] + 0.1).sort(0, descending=True).values[2])  # 3 of 5 fixed
    pred1, r1 = voting_radius(radii[:1], votes[:1], 3)
    assert torch.equal(pred1, votes[0]) and torch.equal(r1, radii[0])
    with pytest.raises(CertificationError):
        voting_radius(torch.full((2, 1), math.nan, dtype=torch.float64), votes[:2, :1], 3)


_CACHE: dict = {}


def _digits_voters():
    if "v" not in _CACHE:
        x, y = data.load("digits", "train")
        nets = []
        for seed in range(3):
            torch.manual_seed(20 + seed)
            net = models.build("linf_mlp", in_shape=[1, 8, 8], num_classes=10, width=48, depth=3, mean=[0.3], std=0.3)
            nets.append(train_model_briefly(net, x, y, steps=60, theta=0.3, batch=256, seed=seed))
        xt, yt = data.load("digits", "test")
        _CACHE["v"] = (nets, xt[:200], yt[:200])
    return _CACHE["v"]


def test_trained_digits_vote_is_never_flipped_at_its_radius():
    nets, x, y = _digits_voters()
    ens = LinfVotingEnsemble(nets).eval()
    cert = certify.certify(ens, x, y)
    assert cert.method.startswith("voting(")
    assert torch.equal(cert.prediction, ens(x).argmax(1))  # the float32 vote, ties to the lowest index
    ok = cert.radius > 0
    assert ok.sum() > 20
    members = torch.stack([m(x).argmax(1) for m in nets])
    for q in (0.2, 0.6, 0.9):
        r = float(torch.quantile(cert.radius[ok], q))
        sel = cert.radius >= r
        eps = 0.999 * r
        att = pgd(ens, x[sel], y[sel], eps=eps, steps=30, restarts=2, step_size=eps / 6)
        assert att.robust.all()
        for i, net in enumerate(nets):  # push each member off its own vote; the vote must stay
            adv = pgd(net, x[sel], members[i, sel], eps=eps, steps=30, restarts=1, step_size=eps / 6).x_adv
            assert (adv - x[sel]).abs().amax() <= eps * (1 + 1e-6)
            assert torch.equal(ens(adv).argmax(1), y[sel])
    # margin-only members: a smaller (sound) radius, reported beside the default
    fast = certify.certify(ens, x, y, method="margin")
    assert (fast.radius <= cert.radius).all()
    torch.testing.assert_close(cert.extra["margin_radius"], fast.radius)


def test_vote_never_exceeds_best_member_and_refuses_unknown_members():
    nets, x, y = _digits_voters()
    cert = certify.certify(LinfVotingEnsemble(nets), x, y)
    best = torch.stack([certify.certify(n, x, y).radius for n in nets]).amax(0)
    assert (cert.radius <= best).all()
    with pytest.raises(CertificationError, match="certificate None"):
        certify.certify(LinfVotingEnsemble([torch.nn.Linear(4, 3)]), torch.rand(2, 4), torch.zeros(2, dtype=torch.long))


def test_factory_option_and_member_wise_training_loss():
    torch.manual_seed(0)
    ens = models.build("linf_ensemble", member={"name": "linf_mlp", "width": 8, "depth": 2}, n=3, in_shape=[1, 2, 2],
                       num_classes=3, mean=[0.5], std=0.5, combine="vote")
    assert isinstance(ens, LinfVotingEnsemble) and ens.certificate == "linf_voting"
    x = torch.rand(16, 1, 2, 2)
    y = torch.randint(0, 3, (16,))
    out = ens(x)
    votes = torch.stack([m(x).argmax(1) for m in ens.members])
    counts = torch.nn.functional.one_hot(votes, 3).sum(0).float()
    assert torch.equal(out.floor(), counts)  # the counts, plus a tie-break below 1/2
    assert torch.equal(out.argmax(1), torch.tensor([_winner(v, 3) for v in votes.T.tolist()]))
    rebuilt = models.build(ens.lipcert_spec["name"], **ens.lipcert_spec["kwargs"])
    assert isinstance(rebuilt, LinfVotingEnsemble)
    from lipcert import losses
    from lipcert.train.objectives import HingeObjective, StepContext

    step = HingeObjective(theta=0.4)(ens, x, y, StepContext({}, torch.arange(16), 0.0))
    each = torch.stack([losses.hinge_loss(m(x), y, 0.4 * 2.0) for m in ens.members]).mean()
    torch.testing.assert_close(step.loss, each)  # each member on its own logits
    with pytest.raises(ValueError, match="combine"):
        models.build("linf_ensemble", member={"name": "linf_mlp"}, n=2, combine="max")
    assert type(models.build("linf_ensemble", member={"name": "linf_mlp", "width": 4}, n=2, in_shape=[1, 2, 2],
                             num_classes=3)) is LinfEnsemble
