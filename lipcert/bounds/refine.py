"""The l2 refinement of LipLT for single-layer blocks (Fazlyab23 Theorem 3.2, Eq. 16).

For a block ``h(x) = H x + G phi(W x)`` with phi slope-restricted in [alpha, beta]
(``c = (alpha+beta)/2``, ``d = (beta-alpha)/2``) and any diagonal T with ``G^T G <= T``:

    L~(T) = ||H + c G W||_2 + d ||W^T T W||_2^(1/2)                       (Fazlyab23 Eq. 16)

is a Lipschitz constant of h. Choices of T (Fazlyab23 §3):

* ``"spectral"`` -- ``T = ||G||^2 I``: ``L~ = ||H + c G W|| + d ||G|| ||W||`` = L_LT of Eq. 15;
* ``"aol"`` -- ``T_ii = sum_j |G^T G|_ij`` (diagonally dominant ``T - G^T G``, hence PSD);
* ``"best"`` -- the smaller of the two.

Everything here is dense and rigorous (float64, provable upper bounds): ``||W^T T W||^(1/2) =
||T^(1/2) W||``, both norms by :func:`lipcert.bounds.norms.dense_norm_upper` plus a slack for
forming the matrices; the computed AOL T is inflated by the rounding bound of ``G^T G`` so that
``G^T G <= T`` holds for the exact G. Used for networks with one hidden layer
(:func:`single_layer_bounds`: ``H = 0``, ``G = c^T W_1`` for the pairwise rows) and for the residual
layers of Fazlyab23 Prop. 3.1 (:func:`residual_block_bounds`: ``H = sqrt(rho) I``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .ltnet import scalar
from ..numerics import U64, gamma, round_up
from .norms import dense_norm_upper

T_RULES = ("spectral", "aol", "best")


@dataclass
class BlockBound:
    value: float  # provable upper bound of Lip(h)
    t_rule: str  # the T that gave it
    linear_part: float  # ||H + c G W|| (upper)
    nonlinear_part: float  # d ||W^T T W||^(1/2) (upper)


def _mat(x: Tensor | float | None, p: int, n: int, ref: Tensor) -> Tensor:
    if x is None:
        return torch.zeros(p, n, dtype=torch.float64, device=ref.device)
    if isinstance(x, (int, float)) and p != n:
        raise ValueError(f"H = h I needs a square block, got G with {p} rows and W with {n} columns")
    if isinstance(x, (int, float)):
        return float(x) * torch.eye(n, dtype=torch.float64, device=ref.device)
    return x.detach().to(torch.float64)


def aol_t(g: Tensor, g_rel: float = 0.0) -> Tensor:
    """``T_ii = sum_j |G^T G|_ij``, inflated so that ``G^T G <= T`` holds for the exact G (float64),
    also when the given G is off by ``g_rel`` relative to each entry of the exact one."""
    g = g.detach().to(torch.float64)
    n = g.shape[0]
    gtg = g.T @ g
    # |fl(G^T G) - G_exact^T G_exact| entrywise
    err = (gamma(n + 2) + 2 * g_rel + g_rel * g_rel) * (1 + gamma(n + 2)) * (g.abs().T @ g.abs())
    t = (gtg.abs() + err).sum(1)
    return t * (1 + gamma(g.shape[1] + 2)) * (1 + 4 * U64)


def block_bound(W: Tensor, G: Tensor, H: Tensor | float | None, alpha: float, beta: float, t_rule: str = "best",
                g_rel: float = 0.0, w_rel: float = 0.0) -> BlockBound:
    """Fazlyab23 Eq. 16 for ``h(x) = H x + G phi(W x)``: W (m, n), G (p, m), H (p, n) or a scalar (H = h I,
    p = n) or None (0). ``t_rule`` "aol" / "best" need phi *elementwise* (diagonal Jacobian, which
    commutes with T); for other 1-Lipschitz activations (MaxMin) only "spectral" is valid.
    A provable upper bound (see module docstring); ``g_rel`` bounds the
    entrywise relative error of the given G (e.g. 2u when it was formed from two products), ``w_rel``
    that of W (e.g. a folded input normalisation)."""
    if t_rule not in T_RULES:
        raise ValueError(f"t_rule must be one of {T_RULES}, got {t_rule!r}")
    w, g = W.detach().to(torch.float64), G.detach().to(torch.float64)
    m, n = w.shape
    if g.shape[1] != m:
        raise ValueError(f"G has {g.shape[1]} columns but W has {m} rows")
    c, d = (alpha + beta) / 2, (beta - alpha) / 2
    h = _mat(H, g.shape[0], n, w)
    lin = h + c * (g @ w)
    lin_err = (gamma(m + 3) + (g_rel + w_rel + g_rel * w_rel) * 1.01) * (h.abs() + abs(c) * (g.abs() @ w.abs()))
    lin_up = round_up(dense_norm_upper(lin) + float(torch.linalg.matrix_norm(lin_err, "fro")) * (1 + gamma(lin.numel())), 2)
    results = {}
    if t_rule in ("spectral", "best"):
        g_up = dense_norm_upper(g) + g_rel * 1.01 * dense_norm_upper(g.abs())
        w_up = dense_norm_upper(w) + w_rel * 1.01 * dense_norm_upper(w.abs())
        results["spectral"] = round_up(d * g_up * w_up, 4)
    if t_rule in ("aol", "best"):
        t = aol_t(g, g_rel)
        nmat = t.sqrt()[:, None] * w  # T^(1/2) W: entries within 3u (sqrt, product) of T^(1/2) W^
        slack = (3 * U64 + w_rel * 1.01) * dense_norm_upper(nmat.abs()) * (1 + 4 * U64)
        results["aol"] = round_up(d * (dense_norm_upper(nmat) + slack), 4)
    rule = min(results, key=results.get)
    nl = results[rule]
    return BlockBound(round_up(lin_up + nl, 2), rule, lin_up, nl)


def single_layer_bounds(w0: Tensor, w1: Tensor, alpha: float, beta: float, t_rule: str = "best",
                        w0_rel: float = 0.0) -> tuple[Tensor, Tensor, float]:
    """Fazlyab23 Eq. 16 for ``f(x) = W_1 phi(W_0 x)``: (pairwise (K, K), per-class (K,), global) bounds with
    ``G = c^T W_1`` for ``c = e_i - e_j`` / ``e_i`` and ``G = W_1``. W_0 (m, n), W_1 (K, m);
    ``w0_rel``: entrywise relative error of W_0 (a folded input normalisation: 2u)."""
    k = w1.shape[0]
    pair = torch.zeros(k, k, dtype=torch.float64)
    cls = torch.zeros(k, dtype=torch.float64)
    w1 = w1.detach().to(torch.float64)
    for i in range(k):
        cls[i] = block_bound(w0, w1[i : i + 1], None, alpha, beta, t_rule, 0.0, w0_rel).value
        for j in range(i + 1, k):
            # the difference row is rounded once: relative error <= u per entry
            pair[i, j] = pair[j, i] = block_bound(w0, w1[i : i + 1] - w1[j : j + 1], None, alpha, beta, t_rule, 1.01 * U64, w0_rel).value
    full = block_bound(w0, w1, None, alpha, beta, t_rule, 0.0, w0_rel).value
    return pair, cls, full


def residual_block_bounds(net, t_rule: str = "best") -> list[BlockBound | None]:
    """Eq. 16 for every Prop. 3.1 residual layer of an :class:`~lipcert.bounds.ltnet.LTNet`
    (None for plain layers): ``H = h I``, ``G = g W^T diag(t)``, ``W``."""
    out: list[BlockBound | None] = []
    for st in net.stages:
        if st.G is None:
            out.append(None)
            continue
        g = scalar(st.G.g) * (st.G.weight.detach().to(torch.float64) * st.G.t.detach().to(torch.float64)[:, None]).T
        out.append(block_bound(st.W.weight, g, scalar(st.h), st.alpha, st.beta, t_rule, g_rel=2.01 * U64))
    return out




def prop31_block_bound(stage) -> float | None:
    """Rigorous Lipschitz bound of a Prop. 3.1 layer ``h(x) = h x + g W^T T phi(W x + b)`` (T >= 0,
    phi elementwise with slopes in [alpha, beta], alpha >= 0), by the mean value form
    ``h(x) - h(x') = (h I + g W^T T D W)(x - x')`` with D diagonal in [alpha, beta]: the matrix is
    symmetric with eigenvalues between ``h + g alpha lambda`` and ``h + g beta lambda`` (and h),
    ``lambda = ||T^(1/2) W||^2``, so ``Lip <= max(|h|, |h + g beta lambda|)``; this is sqrt(rho)
    exactly when the condition of Fazlyab23 Prop. 3.1 holds. None for other stages (alpha < 0 etc.)."""
    from .ltnet import ResidualGAtom

    if stage.G is None or not isinstance(stage.G, ResidualGAtom) or stage.alpha < 0:
        return None
    lam = stage.G.wtw_upper()
    h, g = scalar(stage.h), scalar(stage.G.g)
    gb, ga = g * stage.beta * lam, g * stage.alpha * lam
    ends = [abs(h), abs(h + gb), abs(h + ga)]
    return round_up(max(ends) + 4 * U64 * (abs(h) + abs(gb)), 4)


def residual_product_bound(net) -> float:
    """``||W_L|| prod_k b_k`` with b_k the best rigorous single-stage bound: Eq. 13, Eq. 16 (best T)
    and, for Prop. 3.1 layers, :func:`prop31_block_bound` (Fazlyab23's "prod rho_i^(1/2)")."""
    blocks = residual_block_bounds(net)
    out = net.last.norm_upper()
    for st, bb in zip(net.stages, blocks):
        cands = [st.naive()]
        if bb is not None:
            cands.append(bb.value)
        p31 = prop31_block_bound(st)
        if p31 is not None:
            cands.append(p31)
        out = round_up(out * min(cands), 2)
    return out


__all__ = [
    "BlockBound",
    "T_RULES",
    "aol_t",
    "block_bound",
    "prop31_block_bound",
    "residual_block_bounds",
    "residual_product_bound",
    "single_layer_bounds",
]
