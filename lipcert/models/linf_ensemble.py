"""Ensembles of l-inf-dist nets (EMAReport §2.4): the logits are the average of the members' logits.

An average of L_i-Lipschitz functions is (mean L_i)-Lipschitz (triangle inequality, EMAReport Lemma
A.2), so an ensemble of 1-Lipschitz nets is certified by the margin of its averaged logits;
hybrid members contribute their interval bounds instead (:mod:`lipcert.certify.ensemble`).
Members may be trained jointly on the averaged output (as EMAReport did: build ``linf_ensemble`` in a
preset) or independently (``lipcert train --seeds ...`` then ``lipcert ensemble``).

:class:`LinfVotingEnsemble` (``combine: vote``) predicts by the members' majority vote instead
(ties: the lowest class index among the tied) and is certified from the members' own certificates
(:mod:`lipcert.certify.voting`); trained in one run, each member learns on its own logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .registry import build, factory_params, register


class LinfEnsemble(nn.Module):
    """Average of the members' logits (the "fusion" ensemble of EMAReport App. C.1)."""

    certificate = "linf_ensemble"
    combine = "mean"

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor, return_features: bool = False):
        """Averaged logits; with ``return_features`` also every member's ``(logits, features)``
        (features ``None`` for members without a head), for the hybrid training objective."""
        if not return_features:
            return torch.stack([m(x) for m in self.members]).mean(0)
        outs = [m(x, return_features=True) if hasattr(m, "head") else (m(x), None) for m in self.members]
        return torch.stack([logits for logits, _ in outs]).mean(0), outs

    def member_logits(self, x: Tensor) -> list[Tensor]:
        return [m(x) for m in self.members]

    def nominal_linf_lipschitz(self) -> float:
        """Mean of the members' constants at p = inf (an average of L_i-Lipschitz maps is
        (mean L_i)-Lipschitz): converts margins in raw input units to logit units for the losses."""
        values = []
        for m in self.members:
            fn = getattr(m, "nominal_linf_lipschitz", None)
            if fn is None:
                raise TypeError(f"ensemble member {type(m).__name__} states no nominal l-inf Lipschitz constant")
            values.append(float(fn()))
        return sum(values) / len(values)


def vote_scores(member_logits: Sequence[Tensor]) -> Tensor:
    """(B, K) vote scores: the number of members whose argmax is each class, plus ``(K - 1 - j) / (2 K)``
    for class j. The added part is below 1/2, so it only orders tied classes (the lowest index first):
    the argmax is the majority vote with that tie rule, and the margin is > 0 exactly when a class wins."""
    k = member_logits[0].shape[1]
    votes = torch.stack([z.argmax(1) for z in member_logits])  # (m, B)
    counts = nn.functional.one_hot(votes, k).sum(0).to(member_logits[0].dtype)
    return counts + torch.arange(k - 1, -1, -1, dtype=counts.dtype, device=counts.device) / (2 * k)


class LinfVotingEnsemble(LinfEnsemble):
    """Majority vote of the members (the hard voting a "Voting" ensemble of EMAReport's code
    approximates by averaged softmax); certificate ``linf_voting`` (:mod:`lipcert.certify.voting`).

    The output holds the vote counts with a tie-breaking part below 1/2 (:func:`vote_scores`), so its
    argmax is the vote with ties broken towards the lowest class index, and an attack judging
    margins > 0 judges the vote. Its gradient is the averaged logits' (``scores + (s - s.detach())``):
    vote counts have none, and attacks need one; every iterate is still judged by the votes.
    """

    certificate = "linf_voting"
    combine = "vote"

    def forward(self, x: Tensor, return_members: bool = False):
        """Vote scores (with the averaged logits' gradient); with ``return_members`` also the
        members' logits (the training objectives train each member on its own)."""
        logits = self.member_logits(x)
        mean = torch.stack(logits).mean(0)
        out = vote_scores([z.detach() for z in logits]) + (mean - mean.detach())
        return (out, logits) if return_members else out


@register("linf_ensemble")
def linf_ensemble(
    members: list[dict[str, Any]] | None = None,
    member: dict[str, Any] | None = None,
    n: int = 3,
    in_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    combine: str = "mean",
) -> LinfEnsemble:
    """An ensemble trained jointly on its averaged logits.

    Either ``members``: a list of model specs (``{"name": ..., **kwargs}``), or ``member``: one spec
    repeated ``n`` times (each copy is initialised independently). Dataset facts (``in_shape``,
    ``num_classes``, ``mean``, ``std``) are passed on to members that accept them and do not set them.
    ``combine``: ``"mean"`` (averaged logits, trained jointly) or ``"vote"`` (:class:`LinfVotingEnsemble`:
    majority vote, each member trained on its own logits).
    """
    if combine not in ("mean", "vote"):
        raise ValueError(f"combine must be 'mean' or 'vote', got {combine!r}")
    if (members is None) == (member is None):
        raise ValueError("give exactly one of members=[spec, ...] or member=spec (with n)")
    specs = [dict(s) for s in members] if members is not None else [dict(member) for _ in range(int(n))]
    if not specs:
        raise ValueError("an ensemble needs at least one member")
    shared = {"in_shape": in_shape, "num_classes": num_classes, "mean": mean, "std": std}
    built = []
    for spec in specs:
        if "name" not in spec:
            raise ValueError(f"every member spec needs a 'name', got {spec!r}")
        name = spec.pop("name")
        accepted = factory_params(name)
        for key, value in shared.items():
            if value is not None and key not in spec and (accepted is None or key in accepted):
                spec[key] = list(value) if isinstance(value, (list, tuple)) else value
        built.append(build(name, **spec))
    return LinfVotingEnsemble(built) if combine == "vote" else LinfEnsemble(built)
