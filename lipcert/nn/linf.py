"""l-inf-dist layers (Zhang et al. 2021, "Zhang21"; Zhang et al. 2022, "Zhang22").

Every layer here states its l-inf Lipschitz constant through ``linf_lipschitz()``; a network built
from them is certified by multiplying those constants (Zhang21 Fact 3.1).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .box import box_rounding_error, linf_box_bounds
from .relaxation import check_relaxation, distance_lipschitz, distance_rounding_error, neuron_distance

#: Value c of the identity-map initialisation (authors' public scripts: 10).
IDENTITY_INIT_VALUE = 10.0


class LinfDistLinear(nn.Module):
    """``y_j = ||x - w_j||_p + b_j`` (Zhang21 Eq. 2; the l_p relaxation of Zhang21 §5 for finite p).

    ``p`` may be changed at run time (``layer.p = 8.0``); ``p = inf`` is the exact l-inf-dist
    neuron, which is 1-Lipschitz w.r.t. l-inf. For finite p the layer is ``d^(1/p)``-Lipschitz
    w.r.t. l-inf (Zhang22 Prop. 4.1) with d = in_features. With ``relaxation="lse"`` finite p means
    the log-sum-exp surrogate of EMAReport Eq. 6 instead, which is 1-Lipschitz for every p.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = math.inf,
        bias: bool = False,
        identity_init: bool = False,
        relaxation: str = "lp",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.p = float(p)
        self.relaxation = check_relaxation(relaxation)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters(identity_init)

    def reset_parameters(self, identity_init: bool = False) -> None:
        """Standard Gaussian weights (Zhang21 §5); optionally the identity-map init for in <= out.

        Identity-map init (Zhang21 §5.3, authors' scripts): ``weight[i, i mod in] = -c`` so that on
        inputs above ``-c`` unit i computes ``x_(i mod in) + c``, an identity plus a constant that
        the following mean-shift normalisation removes.
        """
        with torch.no_grad():
            self.weight.normal_()
            if identity_init:
                if self.in_features > self.out_features:
                    raise ValueError(
                        f"identity-map init needs in_features <= out_features, got {self.in_features} > {self.out_features}"
                    )
                rows = torch.arange(self.out_features)
                self.weight[rows, rows % self.in_features] = -IDENTITY_INIT_VALUE
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = neuron_distance(x.reshape(-1, self.in_features), self.weight, self.p, self.relaxation)
        y = y.reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def linf_lipschitz(self) -> float:
        """Upper bound of the l-inf Lipschitz constant: 1 for p = inf or LSE, d^(1/p) otherwise (Zhang22 Prop. 4.1)."""
        return distance_lipschitz(self.in_features, self.p, self.relaxation)

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        """Bound on |computed - exact| output (l-inf), p = inf (or LSE), unit roundoff ``unit``.

        ``fl(x_i - w_i)`` is off by ``unit * |x_i - w_i| <= unit * (|x|max + |w|max)``; abs and max are
        exact; adding the bias is off by ``unit * |out|``. A factor 2 covers second-order terms.
        LSE: :func:`lipcert.nn.lse.lse_rounding_error`.
        """
        w_max = float(self.weight.detach().abs().max()) if self.weight.numel() else 0.0
        return distance_rounding_error(self.in_features, self.p, self.relaxation, in_absmax, w_max, out_absmax, unit)

    def interval_bounds(self, lo: Tensor, hi: Tensor, unit: float = 0.0) -> tuple[Tensor, Tensor]:
        """Exact output range over the input box [lo, hi] (p = inf), widened by the rounding error of
        its own computation for unit roundoff ``unit`` (see :mod:`lipcert.nn.box`)."""
        if not math.isinf(self.p):
            raise ValueError(f"interval bounds need p = inf, the layer has p = {self.p:g}; set p = inf first")
        lead = lo.shape[:-1]
        lo2, hi2 = lo.reshape(-1, self.in_features), hi.reshape(-1, self.in_features)
        lower, upper, shift = linf_box_bounds(lo2, hi2, self.weight.detach())
        if self.bias is not None:
            b = self.bias.detach().to(lower.dtype)
            lower, upper = lower + b, upper + b
        if unit:
            in_absmax = torch.maximum(lo2.abs(), hi2.abs()).amax(1, keepdim=True)
            out_absmax = torch.maximum(lower.abs(), upper.abs())
            w_max = float(self.weight.detach().abs().max()) if self.weight.numel() else 0.0
            err = box_rounding_error(in_absmax, w_max, out_absmax, shift, unit)
            lower, upper = lower - err, upper + err
        return lower.reshape(*lead, self.out_features), upper.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        lse = ", relaxation=lse" if self.relaxation == "lse" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, bias={self.bias is not None}{lse}"


class MeanShiftNorm(nn.Module):
    """Batch-norm without scaling or affine: subtract the per-unit batch mean (Zhang21 §5).

    Training: ``y = x - mean_batch(x)`` and the running mean is updated with ``momentum``.
    Evaluation: ``y = x - running_mean``, a constant shift, so the layer is 1-Lipschitz in any
    norm. Channels are dim 1; all other dims are averaged over (works for (B, C) and (B, C, H, W)).

    Under ``torch.distributed`` with ``sync=True`` the batch mean is the mean over the union of
    all ranks' batches (as SyncBatchNorm does), so training on N processes equals one process.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, sync: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.sync = sync
        self.register_buffer("running_mean", torch.zeros(num_features))

    def _batch_mean(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        total = x.sum(dim=dims)
        if self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from torch.distributed.nn.functional import all_reduce

            stats = torch.cat([total, total.new_tensor([float(count)])])
            stats = all_reduce(stats)
            return stats[:-1] / stats[-1]
        return total / count

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.num_features:
            raise ValueError(f"MeanShiftNorm expects {self.num_features} channels in dim 1, got shape {tuple(x.shape)}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            mean = self._batch_mean(x)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            return x - mean.view(shape)
        return x - self.running_mean.view(shape).to(x.dtype)

    def linf_lipschitz(self) -> float:
        """1: at evaluation the layer is a constant shift (Zhang21 §5)."""
        return 1.0

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        """One subtraction per output: off by at most ``unit * |out|`` (factor 2 for safety)."""
        return 2.0 * unit * out_absmax

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


def set_p(module: nn.Module, p: float) -> None:
    """Set the l_p exponent of every l_p-distance layer inside ``module``."""
    for m in module.modules():
        if isinstance(m, LinfDistLinear) or getattr(m, "is_lp_dist_layer", False):
            m.p = float(p)


def current_p(module: nn.Module) -> float | None:
    """The smallest p among the module's l_p-distance layers (None if it has none)."""
    ps = [m.p for m in module.modules() if isinstance(m, LinfDistLinear) or getattr(m, "is_lp_dist_layer", False)]
    return min(ps) if ps else None


def relaxed_p(module: nn.Module) -> float | None:
    """The smallest finite p among layers that are *not* 1-Lipschitz as evaluated (the l_p
    relaxation at finite p); None if there is none. LSE-relaxed layers are 1-Lipschitz at every p."""
    ps = [
        m.p
        for m in module.modules()
        if (isinstance(m, LinfDistLinear) or getattr(m, "is_lp_dist_layer", False))
        and not math.isinf(m.p)
        and getattr(m, "relaxation", "lp") != "lse"
    ]
    return min(ps) if ps else None
