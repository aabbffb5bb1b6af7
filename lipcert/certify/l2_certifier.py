"""The certifier of ``l2_lipschitz`` models: every l2 bound name, each answered by the certificate
that has it.

* ``naive`` / ``liplt`` / ``liplt-estimate``: pairwise bounds (Fazlyab23; :mod:`lipcert.certify.pairwise`);
* ``global`` / ``local-upper`` / ``local``: Lipschitz constants (Huang21; :mod:`lipcert.certify.l2`);
* ``bcp``: the BCP certificate at each eps (ball and box; Huang21 App. B; :mod:`lipcert.certify.bcp`),
  on top of ``local-upper``; its radius is the largest certified eps (inputs in [0, 1]);
* ``best`` (default): per sample the largest sound radius of LipLT and of Huang21's ``best`` (global +
  local-upper), both computed batch by batch in one pass; networks that are not plain chains
  (e.g. Prop. 3.1 residual layers, which Huang21's bounds do not read) get LipLT alone.

``extra["bound_source"]`` says per sample which bound the radius rests on
(:data:`lipcert.certify.result.BOUND_SOURCES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bounds.span_norms import Budget
from .bcp import BCP_CHOICES, bcp_setup, check_bcp
from .dispatch import register_certifier
from .driver import BatchFn, Certifier, larger_radius
from .l2 import BOUND_CHOICES, check_l2_model, lipschitz_setup
from .pairwise import PAIRWISE_CHOICES, _is_chain, pairwise_setup
from .result import Certificate

#: Every l2 bound name, in the order the CLI lists them.
L2_BOUND_NAMES = (*BOUND_CHOICES, *PAIRWISE_CHOICES, *BCP_CHOICES)


def _best_of(mine: Certificate, theirs: Certificate) -> Certificate:
    """LipLT's radius where it is larger than Huang21's best, with the source of each sample's radius."""
    better = mine.radius > theirs.radius
    extra = dict(theirs.extra)
    extra["radius_liplt"] = mine.radius
    extra["bound_source"] = torch.where(better, mine.extra["bound_source"], theirs.extra["bound_source"])
    return larger_radius(theirs, mine, theirs.method, extra)


def _setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, bound: str = "best",
           eps: float | Sequence[float] | None = None, budget: Budget | None = None, pairs: bool = True,
           skip_attack: dict | bool | None = None, local_iters: int = 2000, local_tol: float = 1e-3,
           seed: int = 0) -> BatchFn:
    if bound in PAIRWISE_CHOICES:
        return pairwise_setup(model, model64, x, y, bound, budget)
    if bound in BCP_CHOICES:
        return bcp_setup(model, model64, x, y, eps=eps, pairs=pairs, skip_attack=skip_attack, seed=seed)
    lipschitz = dict(eps=eps, pairs=pairs, skip_attack=skip_attack, local_iters=local_iters, local_tol=local_tol,
                     seed=seed)
    if bound != "best":
        return lipschitz_setup(model, model64, x, y, bound, **lipschitz)
    mine = pairwise_setup(model, model64, x, y, "liplt", budget)
    if not _is_chain(model):
        def liplt_only(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
            cert = mine(xb, yb, rows)
            cert.method = "l2_lipschitz_best"
            return cert

        return liplt_only
    theirs = lipschitz_setup(model, model64, x, y, "best", **lipschitz)
    return lambda xb, yb, rows: _best_of(mine(xb, yb, rows), theirs(xb, yb, rows))


def _check(model: nn.Module, x: Tensor, bound: str = "best", **options) -> None:
    check_l2_model(model)
    if bound in BCP_CHOICES:
        check_bcp(model, x, **options)


#: The ``l2_lipschitz`` kind's certificate: ``bound`` picks among all l2 bounds (default best).
L2 = Certifier("l2", "l2", _setup, check=_check, bounds=L2_BOUND_NAMES, float64_inputs=False,
               eval_model=True)


def l2_certify(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500, bound: str = "best", eps=None,
               **kwargs) -> Certificate:
    """Certified l2 radii of an l2 Lipschitz network with any l2 bound (see module docstring)."""
    return L2(model, x, y, batch_size=batch_size, bound=bound, eps=eps, **kwargs)


register_certifier("l2_lipschitz", L2)

__all__ = ["L2", "L2_BOUND_NAMES", "l2_certify"]
