"""l2 Lipschitz-bound training objectives (Huang21): LMT, BCP, GloRo, each with a global or local bound.

``objective: {name: local_lip, loss: gloro, power_iters: 5}`` in a preset trains with the local
Lipschitz bound of Huang21 (Local-Lip-G; ``loss: bcp`` is Local-Lip-B); ``name: bcp`` / ``gloro`` /
``lmt`` are the baselines with the global bound (``bound: local`` switches any of them to the
local one). Scheduled values from ``train.schedule``: ``eps`` (Huang21 Eq. 28 ramp) and ``lam``
(the mixture weight of Eq. 25, Eq. 29 ramp).

One training step (Huang21 Algorithm 1):

1. forward pass, recording every pre-activation;
2. global layer norms by power iteration, one persistent vector per layer (estimates,
   differentiable; ``power_iters`` steps per batch);
3. box + ball bounds of every pre-activation for the l2 ball of radius eps (Huang21 Eq. 21-23, ball
   radii from the global norms as in BCP), masks of varying activations (Eq. 3 / 9);
4. local bound: per-sample reduced norms by ``power_iters`` steps of batched power iteration from
   the vectors this sample ended with last epoch (kept per dataset index in float16); with
   ``local_layers`` only for the listed layers, the others keep their global norm from step 2
   (the Huang21 code's TinyImageNet memory scheme, ``--indices``);
5. worst logits (LMT / BCP Eq. 24 / GloRo) with the global or local bound, loss of Eq. 25 plus the
   sparsity loss of Eq. 26.

``after_step`` projects activation thresholds (ReLU-theta theta >= 0) after each optimiser step,
as the authors' code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from .. import losses
from ..bounds import LipschitzChain, VectorStore, global_sigmas, local_sigmas, margin_lower_bounds
from ..bounds.lipschitz import check_layers, reserve_local_vectors
from ..bounds.ball import DEFAULT_MUS
from ..bounds.fast_local import forward_fast, local_sigmas_fast, propagate_fast, training_ops
from .objectives import Objective, StepContext, StepOutput, register_objective
from .schedules import register_schedule

LOSSES = ("lmt", "bcp", "gloro")
BOUNDS = ("global", "local")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class LipschitzObjective(Objective):
    """Worst-logit cross-entropy with a global or local l2 Lipschitz bound (see module docstring).

    Args:
        loss: "lmt" | "bcp" | "gloro" -- how the worst logits are formed.
        bound: "global" (Huang21 Eq. 2) | "local" (Huang21 Eq. 6).
        eps: training radius when the preset schedules none (``train.schedule.eps`` wins).
        lam: mixture weight of Eq. 25 when none is scheduled (``train.schedule.lam`` wins).
        power_iters: power-iteration steps per batch for every norm (Huang21 Table 3).
        sparsity: lambda_sparse of Eq. 26; ``lam_theta``: weight of its upper-threshold term.
        box: use box bounds at the last layer (BCP always does; GloRo with the global bound does
            not, with the local one it does, Huang21 App. B); None = as in the paper.
        store_dtype / store_device: precision and place of the per-sample vectors.
        keep_vectors: keep per-sample vectors between epochs (Huang21 Table 1 "saved u"); False starts
            every batch from random vectors (Table 1 "random init"; needs more power iterations).
        checkpoint_vectors: include the per-sample vectors in the objective's ``state_dict`` (so
            ``--resume`` continues with them). They take ``N * sum_l min(in_l, out_l) * 2`` bytes
            (:func:`lipcert.train.memory.vector_bytes`): about 35 KB per MNIST 4C3F sample, 146 KB
            per CIFAR-10 6C2F sample, 1.2 MB per TinyImageNet 8C2F sample (217 KB with the
            TinyImageNet presets' ``local_layers``); turn this off when the checkpoint would be
            too large.
        local_layers: with the local bound, the 0-based chain layers (as
            :func:`~lipcert.bounds.local_sigmas` numbers them; the last layer is ``L - 1``) whose
            reduced norm is estimated per sample; every other layer uses its global estimate
            (the product of global norms is an upper estimate of the local product, Huang21
            Prop. 1), and per-sample vectors are stored only for the listed layers. None (default):
            every layer. The Huang21 code's ``--indices`` on TinyImageNet (memory).
        fast: compute the bounds with the training-only fast path of
            :mod:`lipcert.bounds.fast_local` (same quantities, float32, less work; loss and
            gradients equal the reference path's up to rounding, relative difference <= 1e-4 in
            the tests). False runs the reference path (``LipschitzChain.propagate`` /
            ``local_sigmas``), e.g. to compare. Certification never uses the fast path.
    """

    def __init__(
        self,
        loss: str = "bcp",
        bound: str = "global",
        eps: float = 0.0,
        lam: float = 1.0,
        power_iters: int = 1,
        sparsity: float = 0.0,
        lam_theta: float = 0.0,
        box: bool | None = None,
        store_dtype: str = "float16",
        store_device: str | None = None,
        keep_vectors: bool = True,
        checkpoint_vectors: bool = True,
        fast: bool = True,
        local_layers: list[int] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown l2 loss {loss!r}; choose one of {LOSSES}")
        if bound not in BOUNDS:
            raise ValueError(f"unknown bound {bound!r}; choose one of {BOUNDS}")
        if power_iters < 1:
            raise ValueError(f"power_iters must be >= 1, got {power_iters}")
        if store_dtype not in _DTYPES:
            raise ValueError(f"store_dtype must be one of {sorted(_DTYPES)}, got {store_dtype!r}")
        if local_layers is not None:
            if bound != "local":
                raise ValueError(f"local_layers needs bound: local, got bound: {bound} (set local_layers: null with a global bound)")
            if isinstance(local_layers, (str, bytes)) or not all(isinstance(l, int) and not isinstance(l, bool) for l in local_layers):
                raise ValueError(f"local_layers must be a list of layer indices, got {local_layers!r}")
            if not local_layers:
                raise ValueError("local_layers is empty; use bound: global for no local layer")
            if len(set(local_layers)) != len(local_layers) or min(local_layers) < 0:
                raise ValueError(f"local_layers must be distinct layer indices >= 0, got {local_layers!r}")
            local_layers = sorted(local_layers)
        self.local_layers = local_layers  # checked against the chain's depth in forward
        self.loss_kind = loss
        self.bound = bound
        self.default_eps = float(eps)
        self.default_lam = float(lam)
        self.power_iters = int(power_iters)
        self.sparsity = float(sparsity)
        self.lam_theta = float(lam_theta)
        self.box = (loss == "bcp" or bound == "local") if box is None else bool(box)
        self.global_store = VectorStore(dtype=torch.float32)
        self.store_dtype = _DTYPES[store_dtype]
        self.local_store = VectorStore(dtype=self.store_dtype, device=store_device)
        self.keep_vectors = bool(keep_vectors)
        self.checkpoint_vectors = bool(checkpoint_vectors)
        self.fast = bool(fast)
        self._reserved = False
        if not self.checkpoint_vectors:
            self._register_state_dict_hook(_drop_local_vectors)

    def forward(self, model: nn.Module, x, y, ctx: StepContext) -> StepOutput:
        eps = float(ctx.values.get("eps", self.default_eps))
        lam = float(ctx.values.get("lam", self.default_lam))
        chain = LipschitzChain.from_model(model)
        if self.local_layers is not None:
            check_layers(self.local_layers, chain.depth)
        ops = training_ops(chain) if self.fast else None
        fwd = forward_fast(chain, x, ops) if self.fast else chain.forward(x)
        logits = fwd.logits
        sig_g = global_sigmas(chain, self.power_iters, self.global_store, ops=ops)
        lip_g = sig_g.prod()
        metrics: dict[str, float] = {"lip_global": float(lip_g.detach())}
        need_boxes = self.box or self.bound == "local" or self.sparsity > 0
        prop = None
        if eps > 0 and need_boxes:
            if self.fast:
                prop, fast_masks = propagate_fast(chain, x, eps, fwd, sig_g, ops)
            else:
                prop = chain.propagate(x, eps, fwd, sigmas=sig_g, ball=True)
        if eps > 0 and self.bound == "local":
            store = self.local_store if self.keep_vectors else None
            n = ctx.extra.get("num_samples")
            if store is not None and n and not self._reserved:  # the whole store at once, never grown
                reserve_local_vectors(store, ops if ops is not None else chain.ops(), int(n), self.local_layers)
                self._reserved = True
            layers = self.local_layers
            if self.fast:
                masks = fast_masks
                sig_l = local_sigmas_fast(chain, masks, ops, self.power_iters, store, ctx.index, layers=layers)
            else:
                masks = chain.masks(prop.bounds)
                sig_l, _ = local_sigmas(chain, masks, self.power_iters, store, ctx.index, layers=layers)
            if layers is not None:
                sig_l = _with_global(sig_l, sig_g, layers)
            lip_prefix = sig_l[:, :-1].prod(dim=1)
            lip_total = lip_prefix * sig_l[:, -1]
            metrics["lip_local_mean"] = float(lip_total.detach().mean())
            metrics["varying"] = float(torch.stack([m[1].float().mean() for m in masks]).mean()) if masks else 0.0
        else:
            lip_prefix = sig_g[:-1].prod()
            lip_total = lip_g
        if eps <= 0:
            worst = logits if self.loss_kind != "gloro" else losses.gloro_logits(logits, y, logits)
        elif self.loss_kind == "lmt":
            worst = losses.lmt_worst_logits(logits, y, eps, lip_total)
        else:
            weight, bias = chain.last_affine()
            center = fwd.post[-1] if fwd.post else x
            lo = hi = None
            if self.box and prop is not None:
                lo, hi = prop.last_box
            m = margin_lower_bounds(weight, bias, y, center, eps * lip_prefix, lo, hi, DEFAULT_MUS, fast=self.fast)
            worst = losses.bcp_worst_logits(logits, y, m)
            if self.loss_kind == "gloro":
                worst = losses.gloro_logits(logits, y, worst)
        loss = losses.robust_mixture_loss(logits, worst, y, lam)
        if self.sparsity > 0 and prop is not None:
            gaps = [s.act.sparsity_gaps(lo_, hi_) for s, (lo_, hi_) in zip(chain.stages[:-1], prop.bounds)]
            sp = losses.sparsity_loss(gaps, self.lam_theta)
            loss = loss + self.sparsity * sp
            metrics["sparsity"] = float(sp.detach())
        with torch.no_grad():
            metrics["robust_acc"] = float((worst.argmax(1) == y).float().mean()) if eps > 0 else math.nan
        return StepOutput(loss, logits, metrics)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Project activation thresholds onto their constraints (theta >= 0), as the authors do."""
        for m in model.modules():
            if m is not model and hasattr(m, "project_") and not isinstance(m, LipschitzObjective):
                m.project_()


def _with_global(sig_local: Tensor, sig_global: Tensor, layers: list[int]) -> Tensor:
    """(B, L): column ``layers[j]`` is ``sig_local[:, j]``, every other column the global estimate."""
    cols = dict(zip(layers, sig_local.unbind(1)))
    batch = sig_local.shape[0]
    return torch.stack([cols[l] if l in cols else sig_global[l].expand(batch) for l in range(sig_global.shape[0])], dim=1)


def _drop_local_vectors(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "local_store.")]:
        del state_dict[key]
    return state_dict


register_objective("lmt", partial(LipschitzObjective, "lmt"))
register_objective("bcp", partial(LipschitzObjective, "bcp"))
register_objective("gloro", partial(LipschitzObjective, "gloro"))


def _local_lip(loss: str = "bcp", **kwargs) -> LipschitzObjective:
    """Local-Lip (Huang21): ``loss`` "bcp" (Local-Lip-B), "gloro" (Local-Lip-G) or "lmt", local bound."""
    kwargs.setdefault("bound", "local")
    return LipschitzObjective(loss, **kwargs)


register_objective("local_lip", _local_lip)


@dataclass(frozen=True)
class HoldExpTo:
    """Huang21 Eq. 27: ``start`` until ``hold``, then ``start * (end / start)^((t - hold) / (total - hold))``.

    As a learning-rate multiplier: ``start: 1``, ``end: End_LR / Initial_LR``, ``hold: m``,
    ``total: T`` (Huang21 Table 3).
    """

    hold: float
    total: float
    end: float
    start: float = 1.0

    def __call__(self, t: float) -> float:
        if t <= self.hold:
            return self.start
        frac = min((t - self.hold) / max(self.total - self.hold, 1e-12), 1.0)
        return self.start * (self.end / self.start) ** frac


register_schedule("hold_exp_to", HoldExpTo)

__all__ = ["BOUNDS", "LOSSES", "HoldExpTo", "LipschitzObjective"]
