"""l-inf-dist networks (Zhang21 Def. 3.1; Zhang22 §5.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import Flatten, InputNormalize, LinfDistLinear, MeanShiftNorm, Negate, set_p
from .registry import register


class LinfDistNet(nn.Sequential):
    """A chain of layers that each state their l-inf Lipschitz constant.

    The network's constant is the product (Zhang21 Fact 3.1). It is exactly ``1 / min(std)`` in raw
    input units when every l_p-distance layer has p = inf; ``lipcert.certify`` refuses to use
    the margin certificate otherwise.
    """

    certificate = "linf_margin"

    def linf_lipschitz(self) -> float:
        """Upper bound of the l-inf Lipschitz constant w.r.t. raw inputs (product over layers)."""
        total = 1.0
        for layer in self:
            fn = getattr(layer, "linf_lipschitz", None)
            if fn is None:
                raise TypeError(f"layer {type(layer).__name__} states no l-inf Lipschitz constant")
            total *= fn()
        return total

    def nominal_linf_lipschitz(self) -> float:
        """The l-inf Lipschitz constant the net has at p = inf, whatever p is now: the scale that
        converts a margin in raw input units into logit units (``1 / std`` for an l-inf-dist net)."""
        total = 1.0
        for layer in self:
            if isinstance(layer, LinfDistLinear) or getattr(layer, "is_lp_dist_layer", False):
                continue
            total *= layer.linf_lipschitz()
        return total

    def set_p(self, p: float) -> "LinfDistNet":
        set_p(self, p)
        return self

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Sequential semantics
        return super().forward(x)


@register("linf_mlp")
def linf_mlp(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    width: int = 5120,
    depth: int = 5,
    mean: Sequence[float] = (0.0,),
    std: float | Sequence[float] = 1.0,
    p: float = math.inf,
    identity_init: bool = True,
    negate_logits: bool = True,
    momentum: float = 0.1,
    relaxation: str = "lp",
) -> LinfDistNet:
    """l-inf-dist MLP: ``depth`` l-inf-dist layers in all, the last one maps to the classes.

    Hidden layers have no bias and are followed by mean-shift normalisation; the last layer has a
    bias and no normalisation (Zhang21 §5). Logits are the negated outputs of the last layer
    (authors' v2 scripts). ``mean``/``std`` normalise raw [0, 1] inputs inside the model.
    ``relaxation="lse"`` uses the log-sum-exp surrogate at finite p (EMAReport Eq. 6; 1-Lipschitz at every p).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    in_features = int(math.prod(in_shape))
    if len(mean) == 1 and in_shape[0] > 1:
        mean = list(mean) * in_shape[0]  # one value for every channel
    layers: list[nn.Module] = [InputNormalize(mean, std), Flatten()]
    d = in_features
    for _ in range(depth - 1):
        layers.append(LinfDistLinear(d, width, p=p, bias=False, identity_init=identity_init and d <= width, relaxation=relaxation))
        layers.append(MeanShiftNorm(width, momentum=momentum))
        d = width
    layers.append(LinfDistLinear(d, num_classes, p=p, bias=True, relaxation=relaxation))
    if negate_logits:
        layers.append(Negate())
    return LinfDistNet(*layers)
