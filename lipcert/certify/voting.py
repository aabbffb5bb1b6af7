"""Certificate for majority-vote ensembles (:class:`lipcert.models.LinfVotingEnsemble`).

EMAReport's code has a "Voting" ensemble (averaged softmax) whose bound is not a certificate
(softmax of interval bounds is not a bound of the vote). This one is sound and rests only on the
members' own certificates.

Prediction: the class with the most member votes; ties go to the lowest class index among the
tied (torch's argmax of the vote counts). Radius: member ``i`` predicts ``c_i`` at x and keeps it
on the closed l-inf ball of its certified radius ``r_i`` (its kind's sound certificate with label
``c_i``). At a radius r the members with ``r_i >= r`` are *fixed*; every other member may vote for
anything. The vote stays ``c*`` on the ball of radius r iff for every class j != c*, with ``F_c``
the fixed votes for c and ``U`` the number of unfixed members,
``F_c* > F_j + U`` (j < c*, which wins a tie) or ``F_c* >= F_j + U`` (j > c*): the worst adversary
puts every unfixed vote on one rival class. Fixing more members never hurts (a fixed vote counts
for one class, an unfixed one against c* for all), so with the radii sorted descending
``r_(1) >= r_(2) >= ...`` the certified radius is ``r_(k)`` for the smallest k whose fixed set
``{i : r_i >= r_(k) > 0}`` passes, and 0 if none does (or c* is not the label).

The radius is always some member's radius, and a member voting c* with ``r_i >= R`` exists (the
condition needs ``F_c* >= 1``), so it never exceeds the best radius of a member certified for
the label. With members certified by the interval bound (``best``) it holds for perturbed
inputs inside [0, 1], as theirs does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_logits
from .dispatch import CERTIFIERS, FAST, register_certifier
from .driver import BatchFn, Certifier
from .ensemble import members_of
from .result import Certificate, CertificationError



def vote_prediction(votes: Tensor, num_classes: int) -> Tensor:
    """The majority vote of member predictions ``votes`` (m, B); ties: the lowest class index."""
    counts = nn.functional.one_hot(votes, num_classes).sum(0)  # (B, K)
    return counts.argmax(1)


def voting_radius(radii: Tensor, votes: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(prediction, radius)`` of the vote of m members on B samples (module docstring).

    ``radii`` (m, B): each member's certified radius around its own prediction ``votes`` (m, B).
    """
    if radii.shape != votes.shape or radii.dim() != 2:
        raise ValueError(f"radii and votes must both be (members, batch), got {tuple(radii.shape)} and {tuple(votes.shape)}")
    if not (radii >= 0).all():  # also NaN
        raise CertificationError("member radii must be numbers >= 0")
    m = votes.shape[0]
    pred = vote_prediction(votes, num_classes)  # (B,)
    onehot = nn.functional.one_hot(votes, num_classes).to(radii.dtype)  # (m, B, K)
    ordered = radii.sort(0, descending=True).values  # (m, B)
    classes = torch.arange(num_classes, device=votes.device)
    rival_wins_tie = (classes[None, :] < pred[:, None])  # (B, K): j < c* wins a tie
    is_pred = classes[None, :] == pred[:, None]
    radius = torch.zeros(votes.shape[1], dtype=radii.dtype, device=radii.device)
    done = torch.zeros(votes.shape[1], dtype=torch.bool, device=radii.device)
    for k in range(m):
        thr = ordered[k]  # (B,)
        fixed = (radii >= thr[None, :]) & (thr[None, :] > 0)  # (m, B)
        counts = (onehot * fixed[..., None]).sum(0)  # (B, K)
        unfixed = m - fixed.sum(0).to(radii.dtype)  # (B,)
        mine = counts.gather(1, pred[:, None])  # (B, 1)
        need = counts + unfixed[:, None] + rival_wins_tie.to(radii.dtype)  # mine >= need for every rival
        ok = ((mine >= need) | is_pred).all(1) & (thr > 0) & ~done
        radius = torch.where(ok, thr, radius)
        done |= ok
    return pred, radius


def _member_certifier(member: nn.Module, fast: bool) -> Certifier:
    kind = member.certificate
    return FAST.get(kind, CERTIFIERS[kind]) if fast else CERTIFIERS[kind]


def _eps_option(cert: Certifier, eps) -> dict:
    return {"eps": eps} if "eps" in cert.options and eps is not None else {}


def _checks(fast: bool):
    def check(model: nn.Module, x: Tensor | None = None, eps=None, **_ignored) -> None:
        for m in members_of(model, "voting"):
            cert = _member_certifier(m, fast)
            if cert.check is not None:
                cert.check(m, x, **_eps_option(cert, eps))

    return check


def _setups(fast: bool):
    def setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None) -> BatchFn:
        members, members64 = members_of(model, "voting"), list(model64.members)
        certs = [_member_certifier(m, fast) for m in members]
        batches = [c.setup(m, m64, x, y, **_eps_option(c, eps)) for c, m, m64 in zip(certs, members, members64)]

        @torch.no_grad()
        def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
            logits = [m64(xb) for m64 in members64]
            check_logits(logits[0], yb)
            votes = torch.stack([z.argmax(1) for z in logits])  # (m, B), float64
            parts = [b(xb, v, rows) for b, v in zip(batches, votes)]
            radii = torch.stack([torch.where(p.prediction == v.cpu(), p.radius, torch.zeros_like(p.radius))
                                 for p, v in zip(parts, votes)])
            pred, radius = voting_radius(radii, votes.cpu(), logits[0].shape[1])
            radius = torch.where(pred == yb.cpu(), radius, torch.zeros_like(radius))
            kinds = "+".join(dict.fromkeys(p.method for p in parts))
            extra = {"member_radius": radii.T.contiguous(), "member_vote": votes.T.cpu()}
            if all("margin_radius" in p.extra for p in parts):  # members' best: also the vote of their margins
                margins = torch.stack([torch.where(p.prediction == v.cpu(), p.extra["margin_radius"], torch.zeros_like(p.radius))
                                       for p, v in zip(parts, votes)])
                _, by_margin = voting_radius(margins, votes.cpu(), logits[0].shape[1])
                extra["margin_radius"] = torch.where(pred == yb.cpu(), by_margin, torch.zeros_like(by_margin))
            return Certificate(radius=radius, prediction=pred, label=yb.cpu(), norm="linf", method=f"voting({kinds})",
                               bound="upper", extra=extra)

        return batch

    return setup


#: Majority vote certified from every member's default (best sound) certificate.
VOTING = Certifier("voting", "linf", _setups(False), check=_checks(False))
#: The same from every member's cheapest certificate (the margin; per-epoch evaluation).
VOTING_FAST = Certifier("voting margin", "linf", _setups(True), check=_checks(True))


def voting(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of the majority vote of ``model.members`` (module docstring);
    ``extra`` holds ``member_radius`` and ``member_vote`` (B, m) and, where every member's
    certificate reports one, ``margin_radius`` (the vote certified from the members' margins alone)."""
    return VOTING(model, x, y, batch_size=batch_size, eps=eps)


register_certifier("linf_voting", VOTING)
register_certifier("linf_voting", VOTING, method="best")
register_certifier("linf_voting", VOTING_FAST, method="margin", fast=True)
