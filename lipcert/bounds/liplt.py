"""LipLT: Lipschitz bounds by loop transformation (Fazlyab23 Theorem 3.3, Eq. 19), pairwise (Fazlyab23 §4.1.1).

For a network in the form of Fazlyab23 Eq. 17 (:class:`~lipcert.bounds.ltnet.LTNet`: plain layers, and
residual layers with H = h I) with activation slopes in ``[alpha_k, beta_k]``
(``c_k = (alpha_k + beta_k) / 2``, ``d_k = (beta_k - alpha_k) / 2``):

    m_0 = ||W_0||,
    m_e = ||span(0, e)|| + sum_{s=1..e} d_{s-1} ||span(s, e)|| m_{s-1}            (Eq. 19)

is a Lipschitz constant of ``x_0 -> y_e`` (spans in :mod:`lipcert.bounds.ltnet`). For ReLU nets
(H = 0, G = I, alpha = 0, beta = 1) this is the authors' recursion
``m_i = sum_{j<i} 0.5^(j+1) ||W_i ... W_(i-j)|| m_(i-1-j) + 0.5^i ||W_i ... W_0||``.
Replacing the last layer ``W_L`` by ``c^T W_L`` bounds the Lipschitz constant of ``c^T f``: with
``c = e_i - e_j`` the *pairwise* constant ``L_ij`` of the logit difference ``z_i - z_j`` (Fazlyab23 Eq. 4-5),
with ``c = e_i`` the per-class ``L_i``. The last-layer terms ``||c^T span(s, L)||`` are norms of
vectors: lipcert computes them exactly from the rows of every ``span(s, L)``, all obtained by one
adjoint sweep of the K basis vectors of the logit space (no power iteration).

Modes of :func:`liplt`:

* ``"upper"`` -- every span norm a provable upper bound (:func:`lipcert.bounds.span_norms.upper_span_norms`:
  exact float64 Gram eigenvalues of materialised spans with rigorous slacks, otherwise the best
  product of rigorous bounds of its parts), the recursion rounded up: label **"upper"**, fit for
  certificates. Because every span bound is at most the product of its layers' bounds, the result
  is never above the naive bound (Fazlyab23: L_LT <= L_naive) up to a few ulps.
* ``"estimate"`` -- span norms by batched power iteration (run to ``tol``): what the paper reports
  and certifies with (the authors' certificates use the few iterations of training). Power
  iteration approaches each norm from below, so this is **not** a proof: label "estimate".

:func:`naive_bounds` gives the comparison of Fazlyab23 Table 2: the product of rigorous per-layer bounds
(Eq. 13 per layer), with the last layer's rows (``||w_i - w_j||``, ``||w_i||``, ``||W_L||``).

:class:`LipLTEstimator` is the differentiable, persistent-vector version used by CRM training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .ltnet import LTNet
from ..numerics import U64, float64_copy, gamma, round_up
from .span_norms import AtomFacts, Budget, ProductBounds, gram_norm_upper, power_span_norms, scalar_upper, span_vectors, upper_span_norms

MODES = ("upper", "estimate")


@dataclass
class LipLTResult:
    """Lipschitz bounds of one network (l2 -> l2, raw input units).

    ``pairwise[i, j]`` bounds the Lipschitz constant of ``z_i - z_j`` (0 on the diagonal),
    ``per_class[i]`` that of ``z_i``, ``lipschitz`` that of the whole logit map; ``hidden[k]`` the
    bound m_k of ``x_0 -> y_k``. ``kind``: "upper" (provable) or "estimate".
    """

    lipschitz: float
    pairwise: Tensor  # (K, K) float64
    per_class: Tensor  # (K,) float64
    hidden: list[float]
    kind: str
    method: str = "liplt"
    span_kinds: dict[tuple[int, int], str] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every producer already mirrors one triangle; this makes symmetry a property of the type
        # (max of the two entries: still an upper bound of L_ij = L_ji, never the smaller one)
        if self.pairwise.dim() == 2 and self.pairwise.shape[0] == self.pairwise.shape[1]:
            self.pairwise = symmetric_upper(self.pairwise)

    def pairs(self) -> Tensor:
        """L_ij over the unique pairs i < j (K(K-1)/2,)."""
        k = self.pairwise.shape[0]
        iu = torch.triu_indices(k, k, 1)
        return self.pairwise[iu[0], iu[1]]


def as_ltnet(model: nn.Module | LTNet, dtype: torch.dtype | None = torch.float64) -> LTNet:
    """An :class:`LTNet` of ``model`` (a float64, eval-mode copy unless ``dtype`` is None)."""
    if isinstance(model, LTNet):
        return model
    if dtype is not None:
        model = float64_copy(model, frozen=True, dtype=dtype)
    return LTNet.from_model(model)


# ----------------------------------------------------------------------------- rows of the last spans
def mirror_upper(upper: Tensor) -> Tensor:
    """The symmetric (K, K) matrix with zero diagonal whose strict upper triangle is that of
    ``upper`` (its diagonal and lower triangle are ignored). ``L_ij`` bounds the Lipschitz constant
    of ``z_i - z_j`` and of ``z_j - z_i`` alike, so one computed value serves both entries and the
    result is exactly symmetric whatever the summation order of the kernels that produced it."""
    u = torch.triu(upper, 1)
    return u + u.T  # exact: one summand of every entry is 0


def symmetric_upper(pair: Tensor) -> Tensor:
    """``max(P, P^T)`` with zero diagonal: exactly symmetric, and each entry still an upper bound
    of ``L_ij`` if either computed entry was (two bounds of one quantity: never the smaller)."""
    out = torch.maximum(pair, pair.T)
    return out.masked_fill(torch.eye(out.shape[0], dtype=torch.bool, device=out.device), 0.0)


def _row_quantities(rows: Tensor, slack: float, rigorous: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(pairwise (K, K), per-class (K,), full ()) norms of ``c^T R`` for rows R (K, n).

    Rigorous: explicit differences in float64 plus the push slack of the rows (each row is off by
    at most ``slack`` in l2) and the rounding of the norms. Otherwise differentiable (Gram form).
    """
    r = rows.reshape(rows.shape[0], -1)
    n = r.shape[1]
    if rigorous:
        with torch.no_grad():
            r = r.to(torch.float64)
            rel = (1 + gamma(n + 4)) * (1 + 4 * U64)
            k = r.shape[0]
            pair = torch.zeros(k, k, dtype=torch.float64, device=r.device)
            for i in range(k - 1):  # one triangle (i < j), mirrored below: L_ij and L_ji are one quantity
                pair[i, i + 1:] = (r[i] - r[i + 1:]).norm(dim=1)
            pair = (pair * rel + 2 * slack) * (1 + 4 * U64)
            pair = mirror_upper(pair)
            cls = (r.norm(dim=1) * rel + slack) * (1 + 4 * U64)
            full = torch.tensor(round_up(gram_norm_upper(r) + slack, 2), dtype=torch.float64)
        return pair, cls, full
    g = r @ r.T
    diag = torch.diagonal(g)
    sq = (diag[:, None] + diag[None, :] - 2 * g).clamp_min(0.0)
    sq = torch.maximum(sq, sq.T)  # g = R R^T need not be bit-symmetric (SIMD order); the larger one
    eye = torch.eye(r.shape[0], dtype=torch.bool, device=r.device)
    pair = torch.where(eye, torch.zeros_like(sq), (sq + 1e-30).sqrt())
    cls = (diag.clamp_min(0.0) + 1e-30).sqrt()
    full = (torch.linalg.eigvalsh(g)[-1].clamp_min(0.0) + 1e-30).sqrt()  # ||R||_2 from the K x K Gram matrix
    return pair, cls, full


def _recursion(net: LTNet, span_vals: dict[tuple[int, int], Tensor | float], rigorous: bool) -> list[Tensor | float]:
    """Hidden bounds m_0 .. m_{L-1} of Eq. 19 from span norm bounds (scalars included)."""
    m: list = []
    for e in range(net.depth):
        val = span_vals[(0, e)]
        for s in range(1, e + 1):
            d = net.stages[s - 1].d
            if d > 0:
                val = val + d * span_vals[(s, e)] * m[s - 1]
        if rigorous:
            val = round_up(float(val) * (1 + gamma(2 * e + 6)), 2)
        m.append(val)
    return m


def _final(net: LTNet, last_vals: list, m: list, rigorous: bool):
    """m_L of Eq. 19 for each row quantity (pairwise / per-class / full)."""
    out = last_vals[0]
    for s in range(1, net.depth + 1):
        d = net.stages[s - 1].d
        if d > 0:
            out = out + d * last_vals[s] * m[s - 1]
    if rigorous:
        out = out * (1 + gamma(2 * net.depth + 8))
    return out


def _last_rows_upper(net: LTNet, facts: AtomFacts, prod: ProductBounds) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Rigorous (pairwise, per-class, full) norms of ``c^T span(s, L)``, s = 0..L, scalars included.

    Exact rows from one float64 adjoint sweep, and for every split point t the product
    ``||c^T W_L Hhat_{L-1} ... Hhat_t|| * U(rest)`` (so each is <= the naive product)."""
    from .span_norms import _adjoint_blocks, _ref

    L = net.depth
    ref = _ref(net)
    k = net.num_classes
    exact: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    suffix: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    with torch.no_grad():
        for s, rows, z in _adjoint_blocks(net, L, 0, ref, torch.eye(k, dtype=torch.float64, device=ref.device)):
            sp = net.span(s, L)
            exact[s] = _row_quantities(rows, facts.push_slack(sp.atoms), True)
            n_suffix = L - s + 1  # atoms of Hhat_s .. Hhat_{L-1}, W_L
            suffix[s] = _row_quantities(z, facts.push_slack(sp.atoms[len(sp.atoms) - n_suffix:]), True)
    out = []
    for s in range(L + 1):
        sp = net.span(s, L)
        best = list(exact[s])
        for t in range(s, L + 1):
            n_suffix = L - t + 1
            prefix = sp.atoms[: len(sp.atoms) - n_suffix]
            if not prefix:
                continue
            u = prod.bound(prefix)[0]
            for q in range(3):
                best[q] = torch.minimum(best[q], suffix[t][q] * u * (1 + 4 * U64))
        sc = scalar_upper(sp)
        out.append(tuple(b * sc * (1 + 2 * U64) for b in best))
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- public API
def liplt(
    model: nn.Module | LTNet,
    mode: str = "upper",
    budget: Budget | None = None,
    iters: int = 500,
    tol: float | None = 1e-6,
    seed: int = 0,
    refine: bool = True,
) -> LipLTResult:
    """LipLT bounds of ``model`` (see module docstring): pairwise, per-class and global.

    ``mode="upper"``: provable (``budget`` limits which spans are materialised exactly);
    ``mode="estimate"``: power iteration with ``iters`` / ``tol`` (label "estimate").
    ``refine`` (upper mode): take the entrywise minimum with the l2 refinement of Thm 3.2 (Eq. 16)
    for dense one-hidden-layer networks and with the refined stage product for networks with
    Prop. 3.1 residual layers (``details["refined_pairs"]`` counts the pairs it improved).
    The model is evaluated as a float64, eval-mode copy; its weights are not changed.
    """
    if mode not in MODES:
        raise ValueError(f"LipLT mode must be one of {MODES}, got {mode!r}")
    t0 = time.perf_counter()
    net = as_ltnet(model)
    spans = net.spans()
    rigorous = mode == "upper"
    details: dict[str, float] = {}
    if rigorous:
        facts = AtomFacts(net)
        vals, report, prod = upper_span_norms(net, spans, budget, facts)
        span_vals: dict = dict(vals)
        kinds = dict(report.kinds)
        t1 = time.perf_counter()
        last = _last_rows_upper(net, facts, prod)
        details = {"atoms_s": report.seconds_atoms, "materialize_s": report.seconds_materialize,
                   "rows_s": time.perf_counter() - t1, "materialized_spans": float(report.materialized)}
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            sig, done = power_span_norms(net, spans, iters=iters, tol=tol, generator=gen)
            span_vals = {(sp.s, sp.e): sp.scalar * float(v) for sp, v in zip(spans, sig)}
            rows, _ = net.rows()
            last = []
            for s in range(net.depth + 1):
                q = _row_quantities(rows[s], 0.0, False)
                last.append(tuple(t * net.row_scalar(s) for t in q))
        kinds = {(sp.s, sp.e): "estimate" for sp in spans}
        details = {"power_iterations": float(done)}
    m = _recursion(net, span_vals, rigorous)
    pair = _final(net, [v[0] for v in last], m, rigorous)
    cls = _final(net, [v[1] for v in last], m, rigorous)
    full = _final(net, [v[2] for v in last], m, rigorous)
    if rigorous and refine:
        ref = _refinements(net)
        if ref is not None:
            details["refined_pairs"] = float((ref.pairwise < pair).triu(1).sum())
            pair = torch.minimum(pair, ref.pairwise)
            cls = torch.minimum(cls, ref.per_class)
            full = torch.minimum(full, torch.as_tensor(ref.lipschitz, dtype=full.dtype))
    return LipLTResult(
        lipschitz=float(full),
        pairwise=pair.detach().to(torch.float64).cpu(),
        per_class=cls.detach().to(torch.float64).cpu(),
        hidden=[float(v) for v in m],
        kind="upper" if rigorous else "estimate",
        span_kinds=kinds,
        seconds=time.perf_counter() - t0,
        details=details,
    )


def _last_layer_quantities(net: LTNet) -> tuple[Tensor, Tensor, float]:
    """Rigorous (||w_i - w_j||, ||w_i||, ||W_L||) of the last layer (float64 net)."""
    w = net.last
    k = w.out_numel
    slack = round_up(gamma(w.fan_in) * w.abs_norm_upper(), 2)
    with torch.no_grad():
        ref = w.weight  # type: ignore[attr-defined]
        rows = w.adjoint(torch.eye(k, dtype=torch.float64, device=ref.device).view(k, *w.out_shape))
        pair, cls, _ = _row_quantities(rows, slack, True)
        full = round_up(w.norm_upper(), 2)
    return pair, cls, full


def _stage_products(net: LTNet, refined: bool) -> list[float]:
    """Running products of per-stage bounds: Eq. 13 (``refined``: the best of Eq. 13, Eq. 16 and
    the Prop. 3.1 bound of :mod:`lipcert.bounds.refine`)."""
    from .refine import prop31_block_bound, residual_block_bounds

    blocks = residual_block_bounds(net) if refined else [None] * net.depth
    prefix, out = 1.0, []
    for st, bb in zip(net.stages, blocks):
        cands = [st.naive()]
        if refined:
            if bb is not None:
                cands.append(bb.value)
            p31 = prop31_block_bound(st)
            if p31 is not None:
                cands.append(p31)
        prefix = round_up(prefix * min(cands), 2)
        out.append(prefix)
    return out


def naive_bounds(model: nn.Module | LTNet, refined: bool = False) -> LipLTResult:
    """The naive bound (Fazlyab23 Eq. 13 layer by layer, Table 2 "Naive"): the product of rigorous
    per-stage bounds, times ``||w_i - w_j||`` / ``||w_i||`` / ``||W_L||`` of the last layer.
    ``refined``: each residual stage at the best of Eq. 13, Eq. 16 and Prop. 3.1. Label "upper"."""
    t0 = time.perf_counter()
    net = as_ltnet(model)
    hidden = _stage_products(net, refined)
    prefix = hidden[-1] if hidden else 1.0
    pair, cls, full = _last_layer_quantities(net)
    rel = 1 + 4 * U64
    return LipLTResult(
        lipschitz=round_up(full * prefix, 4),
        pairwise=pair * prefix * rel,
        per_class=cls * prefix * rel,
        hidden=hidden,
        kind="upper",
        method="naive_refined" if refined else "naive",
        seconds=time.perf_counter() - t0,
    )


def _refinements(net: LTNet) -> LipLTResult | None:
    """Rigorous bounds that can beat Eq. 19 on special structures: Thm 3.2 (Eq. 16, best T) for
    dense networks with one hidden layer, and the refined stage product for residual networks.

    A diagonal T other than ``||G||^2 I`` (AOL) is only valid for *elementwise* activations (the
    proof commutes T with the diagonal Jacobian); MaxMin swaps pairs, so non-elementwise
    activations get the spectral T (Eq. 15), which needs only that phi - cI is d-Lipschitz."""
    from ..nn.activations import ReLU, ReLUTheta
    from .operators import DenseOp
    from .refine import single_layer_bounds

    if net.depth == 1 and not net.stages[0].residual:
        w0, w1 = net.stages[0].W, net.last
        if isinstance(w0, DenseOp) and isinstance(w1, DenseOp) and w1.weight_ops == 0:
            st = net.stages[0]
            w0_rel = w0.weight_rel_error()
            elementwise = isinstance(st.act, (ReLU, ReLUTheta, nn.ReLU)) or bool(getattr(st.act, "elementwise", False))
            t_rule = "best" if elementwise else "spectral"
            pair, cls, full = single_layer_bounds(w0.weight, w1.weight, st.alpha, st.beta, t_rule, w0_rel)
            return LipLTResult(full, pair, cls, [], "upper", method="thm3.2")
    if any(st.residual for st in net.stages):
        return naive_bounds(net, refined=True)
    return None


# ----------------------------------------------------------------------------- training
@dataclass
class PairwiseLipschitz:
    """Differentiable pairwise bounds from :class:`LipLTEstimator` (estimates)."""

    pairwise: Tensor  # (K, K)
    per_class: Tensor  # (K,)
    lipschitz: Tensor  # ()
    hidden: list[Tensor]


class LipLTEstimator(nn.Module):
    """Differentiable LipLT (or naive) pairwise bounds for training (Fazlyab23 §3-4, CRM).

    Hidden span norms by ``iters`` power-iteration steps per call from persistent vectors (kept in
    this module's state_dict), batched over all spans; last-layer rows exact. ``method="naive"``
    uses the product of per-layer power-iteration estimates instead (ablation). Estimates only.
    ``grad_through``: gradients also flow through each call's power iterations (Fazlyab23 authors' code).
    """

    def __init__(self, method: str = "liplt", iters: int = 1, grad_through: bool = False) -> None:
        super().__init__()
        if method not in ("liplt", "naive"):
            raise ValueError(f"method must be 'liplt' or 'naive', got {method!r}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.method = method
        self.iters = int(iters)
        self.grad_through = bool(grad_through)
        self.vectors = span_vectors()

    def forward(self, model: nn.Module | LTNet) -> PairwiseLipschitz:
        net = model if isinstance(model, LTNet) else LTNet.from_model(model)
        if self.method == "naive":
            spans = [net.span(k, k) for k in range(net.depth)]
            sig, _ = power_span_norms(net, spans, self.iters, self.vectors, grad_through=self.grad_through)
            slope = torch.tensor([max(abs(st.alpha), abs(st.beta)) for st in net.stages], dtype=sig.dtype, device=sig.device)
            prefix = (sig * slope).prod() if net.depth else sig.new_ones(())
            rows, _ = net.rows()
            pair, cls, full = _row_quantities(rows[net.depth], 0.0, False)
            return PairwiseLipschitz(pair * prefix, cls * prefix, full * prefix, [prefix])
        spans = net.spans()
        sig, _ = power_span_norms(net, spans, self.iters, self.vectors, grad_through=self.grad_through)
        span_vals = {(sp.s, sp.e): sp.scalar * sig[i] for i, sp in enumerate(spans)}
        m = _recursion(net, span_vals, False)
        rows, _ = net.rows()
        last = []
        for s in range(net.depth + 1):
            q = _row_quantities(rows[s], 0.0, False)
            last.append(tuple(t * net.row_scalar(s) for t in q))
        pair = _final(net, [v[0] for v in last], m, False)
        cls = _final(net, [v[1] for v in last], m, False)
        full = _final(net, [v[2] for v in last], m, False)
        return PairwiseLipschitz(pair, cls, full, m)


__all__ = ["LipLTEstimator", "LipLTResult", "MODES", "PairwiseLipschitz", "as_ltnet", "liplt", "mirror_upper", "naive_bounds",
           "symmetric_upper"]
