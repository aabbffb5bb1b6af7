"""Hybrid "l-inf-dist Net + MLP" models (Zhang21 code; EMAReport Table 1): a 1-Lipschitz backbone and a
conventional MLP head ``Linear -> tanh -> Linear``.

The head is not 1-Lipschitz, so the margin certificate does not apply; the backbone is
(1/std)-Lipschitz w.r.t. l-inf in raw pixels, so for ``||x' - x|| <= eps`` the features lie in the
box ``f(x) +- eps / std`` and the head is certified by interval arithmetic over that box
(:mod:`lipcert.certify.hybrid`).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..nn import ScaledLinear
from .linf import LinfDistNet


def mlp_head(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    """``ScaledLinear -> tanh -> ScaledLinear`` (the authors' predictor head)."""
    if hidden < 1:
        raise ValueError(f"head_hidden must be >= 1, got {hidden}")
    return nn.Sequential(ScaledLinear(in_features, hidden), nn.Tanh(), ScaledLinear(hidden, num_classes))


class LinfHybridNet(nn.Module):
    """``head(backbone(x))``: an l-inf Lipschitz chain of features followed by an MLP head.

    ``certificate = "linf_hybrid"``: certified by the backbone's Lipschitz box propagated through
    the head with interval arithmetic (radii by bisection on eps).
    """

    certificate = "linf_hybrid"

    def __init__(self, backbone: LinfDistNet, head: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits

    def feature_lipschitz(self, at_inf: bool = False) -> float:
        """l-inf Lipschitz constant of the features w.r.t. raw inputs (product over backbone layers);
        ``at_inf``: the constant the backbone will have at p = inf (l_p layers counted as 1)."""
        return self.backbone.nominal_linf_lipschitz() if at_inf else self.backbone.linf_lipschitz()
