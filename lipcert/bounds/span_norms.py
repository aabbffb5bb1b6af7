"""Norms of the composed operators of LipLT (Fazlyab23 Eq. 19): estimates and provable upper bounds.

Estimates (training, and the paper's numbers): :func:`power_span_norms` runs power iteration on
every span at once -- one forward and one adjoint sweep of :class:`~lipcert.bounds.ltnet.LTNet`
per iteration, each layer called once for the vectors of all spans (O(L) sequential steps for
O(L^2) norms, Fazlyab23 §3.1 "Complexity"), with persistent vectors between calls. ``sigma = ||A u||``
with u detached is differentiable in the weights and is a *lower* bound of ``||A||``.

Provable upper bounds (certificates): :func:`upper_span_norms`.

1. *Materialisation.* A span with a small side (``n <= Budget.max_vectors``) is applied to the n
   basis vectors of that side -- a forward sweep from its start layer or an adjoint sweep from its
   end layer, shared by every span with the same start (end) -- in float64, and its norm is the
   square root of the top eigenvalue of the smaller Gram matrix of the resulting block B.
   Rounding: pushing the basis through atoms M_r ... M_1 in floating point gives
   ``|B^ - B| <= gamma_N |M_r| ... |M_1|`` entrywise (Higham, Lemma 3.3 / §3.5; N the sum of the
   atoms' fan-ins), so ``||B^ - B||_2 <= gamma_N prod || |M_i| ||_2`` (entrywise-nonnegative
   matrices are monotone in the spectral norm); forming the Gram matrix adds at most
   ``gamma_m ||B^||_F^2`` and the symmetric eigensolver ``64 n u ||G||`` (backward stability, as
   :mod:`lipcert.bounds.norms`). All slacks are added and the result is rounded up.
2. *Products.* ``||A B|| <= ||A|| ||B||`` for every split of a span into two contiguous parts:
   the bound of a span is the smallest product over splits (dynamic programming over its atoms),
   with single atoms at their rigorous bounds (dense: float64 SVD; conv: polyphase circulant bound)
   and materialised parts at their exact values. Spans too large to materialise thus still get a
   sound bound, never worse than the product of their layers' bounds (so LipLT <= naive holds).

``Budget`` caps the work per materialised span (vectors, block memory, multiply-adds);
:class:`SpanReport` records which spans were exact and how long everything took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .ltnet import Atom, LTNet, Span
from .power import VectorStore
from ..numerics import U64, gamma, round_up


# ----------------------------------------------------------------------------- estimates
def span_vectors() -> VectorStore:
    """The persistent power-iteration vectors of every span (one block per span, kept in the
    vectors' own precision), named ``u_<s>_<e>`` in the owner's state_dict."""
    return VectorStore(dtype=None, prefix="u_")


def span_key(span: Span) -> str:
    """The key of a span's vectors in :func:`span_vectors` ("<s>_<e>")."""
    return f"{span.s}_{span.e}"


def _unit(t: Tensor) -> Tensor:
    n = t.flatten(1).norm(dim=1).clamp_min(1e-30)
    return t / n.view(-1, *([1] * (t.dim() - 1)))


def power_span_norms(
    net: LTNet,
    spans: Sequence[Span],
    iters: int = 1,
    store: VectorStore | None = None,
    tol: float | None = None,
    generator: torch.Generator | None = None,
    grad_through: bool = False,
) -> tuple[Tensor, int]:
    """Power-iteration estimates of ``||span||`` (scalars excluded) for every span, batched.

    Returns ``(sigma (n_spans,), iterations run)``; sigma is differentiable in the weights. Starts
    from the stored vectors (else random), runs ``iters`` iterations (with ``tol``: stops once no
    vector moves by more than tol) and stores the new vectors. An **estimate**: a lower bound.
    The gradient treats the final vectors as constants, unless ``grad_through``: then it also
    flows through this call's iterations (as in the training code of Fazlyab23's authors).
    """
    if not spans:
        return torch.zeros(0), 0
    ref = _ref(net)
    u = []
    for sp in spans:
        prev = store.get_block(span_key(sp)) if store is not None else None
        if prev is None or tuple(prev.shape[1:]) != tuple(sp.in_shape):
            prev = torch.randn((1, *sp.in_shape), generator=generator, dtype=ref.dtype, device=ref.device if generator is None else "cpu")
        u.append(_unit(prev.to(device=ref.device, dtype=ref.dtype)))
    done = 0
    with torch.set_grad_enabled(grad_through and torch.is_grad_enabled()):
        for _ in range(iters):
            v = [_unit(t) for t in net.sweep_forward(spans, u)]
            new = [_unit(t) for t in net.sweep_adjoint(spans, v)]
            moved = max(float((a - b).detach().flatten(1).norm(dim=1).max()) for a, b in zip(new, u))
            u = new
            done += 1
            if tol is not None and moved <= tol:
                break
    out = net.sweep_forward(spans, u if grad_through else [t.detach() for t in u])
    sigma = torch.stack([t.flatten(1).norm(dim=1).max() for t in out])
    if store is not None:
        for sp, t in zip(spans, u):
            store.put_block(span_key(sp), t)
    return sigma, done


def _ref(net: LTNet) -> Tensor:
    from .ltnet import _ref_tensor

    return _ref_tensor(net.last)


# ----------------------------------------------------------------------------- upper bounds
@dataclass
class Budget:
    """Limits for materialising one span (defaults: seconds each on a laptop CPU)."""

    max_vectors: int = 4096  # basis vectors pushed (the span's smaller side)
    max_block_bytes: int = 512 * 2**20  # float64 block of pushed vectors at any layer
    max_madds: float = 2e10  # pushes + Gram + eigensolver, multiply-adds

    @classmethod
    def none(cls) -> "Budget":
        """Materialise nothing: every span bound is a product of single-layer bounds."""
        return cls(max_vectors=0, max_block_bytes=0, max_madds=0)


@dataclass
class SpanReport:
    kinds: dict[tuple[int, int], str] = field(default_factory=dict)  # "exact" | "product" | "single"
    seconds_materialize: float = 0.0
    seconds_atoms: float = 0.0
    materialized: int = 0


def gram_norm_upper(block: Tensor) -> float:
    """Rigorous upper bound of ``||B^||_2`` for a float64 block (n, *shape) via the smaller Gram
    matrix (slacks in the module docstring)."""
    if block.numel() == 0:
        return 0.0
    b = block.reshape(block.shape[0], -1).to(torch.float64)
    n, dim = b.shape
    g = b @ b.T if n <= dim else b.T @ b
    inner = dim if n <= dim else n
    g = (g + g.T) / 2
    lam = float(torch.linalg.eigvalsh(g)[-1].clamp_min(0.0))
    fro_b2 = float(b.square().sum()) * (1 + gamma(dim + 2))
    fro_g = float(torch.linalg.matrix_norm(g, "fro")) * (1 + gamma(g.shape[0] + 2))
    slack = gamma(inner + 2) * fro_b2 * 1.01 + (64 * g.shape[0] + 1) * U64 * fro_g
    return round_up(math.sqrt(round_up(lam + slack, 4)) * (1 + 2 * U64), 4)


def _chunked(fn, x: Tensor, atom: Atom) -> Tensor:
    """Apply ``fn`` to a large batch in chunks (bounded im2col buffers)."""
    per = max(atom.in_numel * 9, atom.out_numel, 1)
    chunk = max(1, 2**24 // per)
    if x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def _forward_blocks(net: LTNet, s: int, last_e: int, ref: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Blocks ``span(s, k)(basis)`` (scalars excluded) for k = s .. last_e, sharing the pushes."""
    sp = net.span(s, s)
    n = math.prod(sp.in_shape)
    x = torch.eye(n, dtype=torch.float64, device=ref.device).view(n, *sp.in_shape)
    if s >= 1 and net.stages[s - 1].G is not None:
        g = net.stages[s - 1].G
        x = _chunked(g.forward, x, g)  # type: ignore[arg-type]
    for k in range(s, last_e + 1):
        w = net.W(k)
        y = _chunked(lambda t: w.forward(t.reshape(t.shape[0], *w.in_shape)), x, w)
        yield k, y
        if k == last_e:
            return
        st = net.stages[k]
        if st.residual:
            g = st.G
            x = st.h * x.reshape(y.shape[0], -1) + st.c * _chunked(g.forward, y, g).reshape(y.shape[0], -1)  # type: ignore[union-attr,arg-type]
        else:
            x = y
        del y


def _adjoint_blocks(net: LTNet, e: int, last_s: int, ref: Tensor, basis: Tensor | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(s, rows of span(s, e), suffix in x_s space)`` for s = e .. last_s (scalars excluded)."""
    w = net.W(e)
    if basis is None:
        n = w.out_numel
        basis = torch.eye(n, dtype=torch.float64, device=ref.device)
    z = _chunked(lambda t: w.adjoint(t.reshape(t.shape[0], *w.out_shape)), basis, w)
    for s in range(e, last_s - 1, -1):
        if s >= 1 and net.stages[s - 1].G is not None:
            g = net.stages[s - 1].G
            rows = _chunked(lambda t: g.adjoint(t), z, g)  # type: ignore[union-attr]
        else:
            rows = z
        yield s, rows, z
        if s == last_s:
            return
        st = net.stages[s - 1]
        atom = st.R if st.residual else st.W
        z = _chunked(lambda t: atom.adjoint(t.reshape(t.shape[0], *atom.out_shape)), z, atom)  # type: ignore[union-attr]


class AtomFacts:
    """Rigorous per-atom bounds (norm, |.| norm), computed once."""

    def __init__(self, net: LTNet) -> None:
        t0 = time.perf_counter()
        self.net = net
        self.norm = [a.norm_upper() for a in net.atoms]
        self.abs = [a.abs_norm_upper() for a in net.atoms]
        self.seconds = time.perf_counter() - t0

    def push_slack(self, atoms: Sequence[int]) -> float:
        """Bound on ||B^ - B||_2 for a block pushed through ``atoms`` (module docstring)."""
        n = sum(self.net.atoms[a].fan_in for a in atoms)
        prod = 1.0
        for a in atoms:
            prod *= self.abs[a]
        return round_up(gamma(n) * prod * (1 + 4 * len(atoms) * U64), 4)


def _plan(net: LTNet, spans: Sequence[Span], budget: Budget) -> tuple[dict[int, list[Span]], dict[int, list[Span]]]:
    """Assign materialisable spans to forward sweeps (by start) or adjoint sweeps (by end)."""
    fwd: dict[int, list[Span]] = {}
    adj: dict[int, list[Span]] = {}
    for sp in spans:
        if len(sp.atoms) < 2:
            continue
        n_in, n_out = math.prod(sp.in_shape), math.prod(sp.out_shape)
        dims = [net.atoms[a].out_numel for a in sp.atoms] + [n_in]
        push = sum(net.atoms[a].cost for a in sp.atoms)
        options = sorted([(n_in, "fwd"), (n_out, "adj")])
        for n, way in options:
            big = max(dims)
            gram_side, other = min(n, n_out if way == "fwd" else n_in), max(n, n_out if way == "fwd" else n_in)
            madds = n * push + gram_side**2 * other + gram_side**3
            if n <= budget.max_vectors and n * big * 8 <= budget.max_block_bytes and madds <= budget.max_madds:
                (fwd.setdefault(sp.s, []) if way == "fwd" else adj.setdefault(sp.e, [])).append(sp)
                break
    return fwd, adj


def upper_span_norms(
    net: LTNet, spans: Sequence[Span], budget: Budget | None = None, facts: AtomFacts | None = None,
) -> tuple[dict[tuple[int, int], float], SpanReport, "ProductBounds"]:
    """Provable upper bounds of ``||span(s, e)||`` *including* its scalar, for every span.

    ``net`` must be float64. Returns ``({(s, e): bound}, report, product_bounds)``; the last one
    bounds any contiguous atom sequence (used by the pairwise rows of :mod:`lipcert.bounds.liplt`).
    """
    budget = budget or Budget()
    facts = facts or AtomFacts(net)
    report = SpanReport(seconds_atoms=facts.seconds)
    ref = _ref(net)
    if ref.dtype != torch.float64:
        raise ValueError("upper_span_norms needs a float64 network (LTNet.from_model of a float64 copy)")
    exact: dict[tuple[int, ...], float] = {}
    t0 = time.perf_counter()
    fwd, adj = _plan(net, spans, budget)
    with torch.no_grad():
        for s, group in fwd.items():
            want = {sp.e: sp for sp in group}
            for k, y in _forward_blocks(net, s, max(want), ref):
                if k in want:
                    sp = want[k]
                    exact[sp.atoms] = round_up(gram_norm_upper(y) + facts.push_slack(sp.atoms), 2)
                    report.materialized += 1
        for e, group in adj.items():
            want = {sp.s: sp for sp in group}
            for s, rows, _ in _adjoint_blocks(net, e, min(want), ref):
                if s in want:
                    sp = want[s]
                    exact[sp.atoms] = round_up(gram_norm_upper(rows) + facts.push_slack(sp.atoms), 2)
                    report.materialized += 1
        for k, st in enumerate(net.stages):  # Hhat_k of residual layers: exact when small
            if st.R is not None and st.R.in_numel <= budget.max_vectors:
                rid = net.atoms.index(st.R)
                n = st.R.in_numel
                blk = st.R.forward(torch.eye(n, dtype=torch.float64, device=ref.device).view(n, *st.R.in_shape))
                exact[(rid,)] = round_up(gram_norm_upper(blk) + facts.push_slack((rid,)), 2)
    report.seconds_materialize = time.perf_counter() - t0
    prod = ProductBounds(facts, exact)
    out: dict[tuple[int, int], float] = {}
    for sp in spans:
        val, kind = prod.bound(sp.atoms)
        out[(sp.s, sp.e)] = round_up(scalar_upper(sp) * val, 2)
        report.kinds[(sp.s, sp.e)] = kind
    return out, report, prod


def scalar_upper(sp: Span) -> float:
    """The span's scalar (a product of c_i >= 0), rounded up."""
    return round_up(abs(sp.scalar) * (1 + 2 * len(sp.atoms) * U64), 2) if sp.scalar else 0.0


class ProductBounds:
    """``U(atoms) = min(exact, min over splits U(left) U(right))`` with single atoms at their
    rigorous bounds: a provable upper bound of the norm of any contiguous atom product."""

    def __init__(self, facts: AtomFacts, exact: dict[tuple[int, ...], float]) -> None:
        self.facts = facts
        self.exact = exact
        self._memo: dict[tuple[int, ...], tuple[float, str]] = {}

    def bound(self, atoms: tuple[int, ...]) -> tuple[float, str]:
        if not atoms:
            return 1.0, "identity"
        if atoms in self._memo:
            return self._memo[atoms]
        if len(atoms) == 1:
            single = self.facts.norm[atoms[0]]
            ex = self.exact.get(atoms, math.inf)
            res = (ex, "exact") if ex < single else (single, "single")
        else:
            best, kind = self.exact.get(atoms, math.inf), "exact"
            for i in range(1, len(atoms)):
                v = round_up(self.bound(atoms[:i])[0] * self.bound(atoms[i:])[0], 1)
                if v < best:
                    best, kind = v, "product"
            res = (best, kind)
        self._memo[atoms] = res
        return res


__all__ = [
    "AtomFacts",
    "Budget",
    "ProductBounds",
    "SpanReport",
    "gamma",
    "gram_norm_upper",
    "power_span_norms",
    "scalar_upper",
    "span_key",
    "span_vectors",
    "upper_span_norms",
]
