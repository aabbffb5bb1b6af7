"""Networks in the form of Fazlyab23 Eq. 17, loop-transformed (Fazlyab23 Eq. 14, Lemma 3.1).

    y_k     = W_k x_k                          k = 0 .. L
    x_{k+1} = H_k x_k + G_k phi_k(y_k)         k = 0 .. L-1

Plain layers have ``H_k = 0, G_k = I`` (``x_{k+1} = phi_k(W_k x_k)``); the residual layers of Fazlyab23
Prop. 3.1 (:class:`lipcert.nn.residual_l2.SqrtRhoResidual`) have ``H_k = sqrt(rho) I`` and
``G_k = -(alpha + beta) / sqrt(rho) W_k^T T_k``. ``W_L`` is the last (logit) layer. Biases do not
change Lipschitz constants and are ignored here.

Every activation is described by slope bounds ``(alpha, beta)`` (Fazlyab23 §3): with
``c = (alpha + beta) / 2`` and ``d = (beta - alpha) / 2`` the loop-transformed nonlinearity
``psi = phi - c I`` is d-Lipschitz, so ``x_{k+1} = Hhat_k x_k + G_k psi_k(y_k)`` with
``Hhat_k = H_k + c_k G_k W_k``. Elementwise slope-restricted activations: ReLU and ReLU-theta
(0, 1). MaxMin and clipped MaxMin are not elementwise; ``(-1, 1)`` (c = 0, d = 1) is valid because
they are 1-Lipschitz, and no other c helps (the Jacobian of MaxMin - c I on a swapped pair has
norm 1 + |c|), so loop transformation gains nothing there. A layer with no activation is
``(1, 1)`` (c = 1, d = 0).

A *span* (s, e), ``0 <= s <= e <= L``, is the linear map appearing in Fazlyab23 Eq. 18 / 19:

    span(0, e) = W_e Hhat_{e-1} ... Hhat_0                (input space: x_0)
    span(s, e) = W_e Hhat_{e-1} ... Hhat_s G_{s-1}        (s >= 1; input space: y_{s-1})

so that Theorem 3.3 reads ``m_e = ||span(0, e)|| + sum_{s=1..e} d_{s-1} ||span(s, e)|| m_{s-1}``.
A span is a scalar (the product of the c_i of plain layers, kept out of the vectors) times a
sequence of *atoms*: ``W_k``, ``G_k`` and, for residual layers, ``R_k = Hhat_k``.
:meth:`LTNet.sweep_forward` / :meth:`LTNet.sweep_adjoint` push one batch of vectors per span
through every layer once, all spans that share a layer in a single call: L sequential steps for all
O(L^2) spans (Fazlyab23 §3.1 "Complexity").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nn.activations import ClippedMaxMin, MaxMin, ReLU, ReLUTheta
from ..numerics import U64
from .layers import UnsupportedLayer
from .network import Block, Network, parse
from .norms import dense_norm_upper
from .operators import ConvOp, DenseOp, LinearOp


class LTError(ValueError):
    """The model is not a network of the form of Fazlyab23 Eq. 17 that LipLT understands."""


def scalar(x: Tensor | float) -> float:
    """A Python float of a number or 0-d tensor (coefficients stay tensors for gradients)."""
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


# ----------------------------------------------------------------------------- slope bounds
SLOPES: dict[type, tuple[float, float]] = {}


def register_slopes(cls: type, alpha: float, beta: float) -> None:
    """Declare that activations of class ``cls`` satisfy: ``phi - (alpha+beta)/2 I`` is
    ``(beta-alpha)/2``-Lipschitz in l2 (true for elementwise slopes in [alpha, beta])."""
    if not alpha <= beta:
        raise ValueError(f"slope bounds need alpha <= beta, got ({alpha}, {beta})")
    SLOPES[cls] = (float(alpha), float(beta))


register_slopes(ReLU, 0.0, 1.0)
register_slopes(ReLUTheta, 0.0, 1.0)
register_slopes(nn.ReLU, 0.0, 1.0)
register_slopes(MaxMin, -1.0, 1.0)
register_slopes(ClippedMaxMin, -1.0, 1.0)


def slope_bounds(act: nn.Module | None) -> tuple[float, float]:
    """(alpha, beta) of an activation: its ``slope_bounds`` attribute, else the registry; None = (1, 1)."""
    if act is None:
        return (1.0, 1.0)
    own = getattr(act, "slope_bounds", None)
    if own is not None:
        a, b = own
        return float(a), float(b)
    for cls in type(act).__mro__:
        if cls in SLOPES:
            return SLOPES[cls]
    raise LTError(
        f"no slope bounds known for activation {type(act).__name__}; declare them with "
        "lipcert.bounds.ltnet.register_slopes(cls, alpha, beta) or a `slope_bounds` attribute"
    )


# ----------------------------------------------------------------------------- atoms
# The linear maps of Eq. 17 are :class:`~lipcert.bounds.operators.LinearOp` s: layer operators
# ``W_k`` (DenseOp / ConvOp, input normalisation folded in) and, for residual layers, ``G_k`` and
# ``R_k = Hhat_k`` below. ``Atom`` is the name LipLT's span code uses for any of them.
Atom = LinearOp


class ResidualGAtom(LinearOp):
    """``G_k = g W^T diag(t)`` of a Prop. 3.1 residual layer: y-space (inner,) -> x-space (features,)."""

    def __init__(self, weight: Tensor, t: Tensor, g: Tensor | float, x_shape: tuple[int, ...], name: str) -> None:
        self.weight, self.t, self.g = weight, t, g  # g may be a tensor (gradients to rho)
        self.name = name
        self.in_shape, self.out_shape = (weight.shape[0],), tuple(x_shape)
        self.fan_in = int(weight.shape[0]) + 3
        self.cost = weight.numel()

    def forward(self, v: Tensor) -> Tensor:
        return (self.g * ((v * self.t) @ self.weight)).view(v.shape[0], *self.out_shape)

    def adjoint(self, x: Tensor) -> Tensor:
        return self.g * (x.reshape(x.shape[0], -1) @ self.weight.T) * self.t

    def _dense(self) -> Tensor:
        return (self.weight.detach().to(torch.float64) * self.t.detach().to(torch.float64)[:, None]).T

    def norm_upper(self) -> float:
        return abs(scalar(self.g)) * dense_norm_upper(self._dense()) * (1 + 4 * U64)

    def abs_norm_upper(self) -> float:
        return abs(scalar(self.g)) * dense_norm_upper(self._dense().abs()) * (1 + 4 * U64)

    def wtw_upper(self) -> float:
        """Upper bound of ``lambda_max(W^T T W) = ||T^(1/2) W||^2`` (t >= 0; entries of the formed
        T^(1/2) W within 2u relative of the exact ones)."""
        n = self.t.detach().to(torch.float64).clamp_min(0).sqrt()[:, None] * self.weight.detach().to(torch.float64)
        up = dense_norm_upper(n) + 2.01 * U64 * dense_norm_upper(n.abs())
        return up * up * (1 + 4 * U64)


class HatAtom(LinearOp):
    """``R_k = Hhat_k = h I + c G_k W_k`` of a residual layer (x_k -> x_{k+1})."""

    def __init__(self, h: Tensor | float, c: float, w: Atom, g: Atom, name: str) -> None:
        self.h, self.c, self.w, self.g = h, float(c), w, g
        self.name = name
        self.in_shape, self.out_shape = w.in_shape, g.out_shape
        self.fan_in = w.fan_in + g.fan_in + 3
        self.cost = w.cost + g.cost + self.in_numel

    def forward(self, x: Tensor) -> Tensor:
        out = self.c * self.g.forward(self.w.forward(x))
        return out + self.h * x.reshape(out.shape)

    def adjoint(self, y: Tensor) -> Tensor:
        out = self.c * self.w.adjoint(self.g.adjoint(y))
        return out + self.h * y.reshape(out.shape)

    def norm_upper(self) -> float:
        """min of the triangle inequality ``|h| + |c| ||G|| ||W||`` and, for Prop. 3.1 layers
        (``G = g W^T T``, T >= 0), the symmetric bound: ``Hhat = h I + c g W^T T W`` has its
        eigenvalues between h and ``h + c g lambda``, ``lambda = ||T^(1/2) W||^2``."""
        h = scalar(self.h)
        tri = (abs(h) + abs(self.c) * self.g.norm_upper() * self.w.norm_upper()) * (1 + 8 * U64)
        if isinstance(self.g, ResidualGAtom) and isinstance(self.w, DenseOp) and self.w.weight is self.g.weight:
            lam = self.g.wtw_upper()
            cg = self.c * scalar(self.g.g)
            sym = max(abs(h), abs(h + cg * lam) + 4 * U64 * (abs(h) + abs(cg * lam))) * (1 + 8 * U64)
            return min(tri, sym)
        return tri

    def abs_norm_upper(self) -> float:
        return (abs(scalar(self.h)) + abs(self.c) * self.g.abs_norm_upper() * self.w.abs_norm_upper()) * (1 + 8 * U64)


# ----------------------------------------------------------------------------- the network
@dataclass
class LTStage:
    """Stage k of Eq. 17: ``W`` (x_k -> y_k), the activation and its slopes, and for residual
    layers ``h`` (H_k = h I) and ``G`` (y_k -> x_{k+1}); plain layers have ``G = None``."""

    W: Atom
    act: nn.Module | None
    alpha: float
    beta: float
    h: Tensor | float = 0.0  # a tensor for learnable rho (gradients), see ``scalar``
    G: Atom | None = None
    R: Atom | None = None  # Hhat_k as an atom (residual layers only)
    module: nn.Module | None = None

    @property
    def c(self) -> float:
        return (self.alpha + self.beta) / 2

    @property
    def d(self) -> float:
        return (self.beta - self.alpha) / 2

    @property
    def residual(self) -> bool:
        return self.G is not None

    def naive(self) -> float:
        """Eq. 13: ``||H|| + beta ||G|| ||W||`` (plain: ``max(|alpha|, |beta|) ||W||``), an upper bound."""
        slope = max(abs(self.alpha), abs(self.beta))
        if self.G is None:
            return slope * self.W.norm_upper() * (1 + 4 * U64)
        return (abs(scalar(self.h)) + slope * self.G.norm_upper() * self.W.norm_upper()) * (1 + 8 * U64)


@dataclass
class Span:
    s: int
    e: int
    scalar: float  # product of c_i of plain layers s..e-1
    atoms: tuple[int, ...]  # atom ids, first applied first
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


@dataclass
class SweepState:
    """Per-layer scratch of a batched sweep (kept for tests and benchmarks)."""

    calls: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class LTNet:
    """A model read as Eq. 17 (see module docstring); ``atoms`` holds every W, G and R."""

    def __init__(self, stages: list[LTStage], last: Atom, in_shape: tuple[int, ...]) -> None:
        self.stages = stages
        self.last = last
        self.in_shape = in_shape
        self.network: Network | None = None  # the parsed model (from_model)
        self.atoms: list[Atom] = []
        self._w_id: list[int] = []
        self._g_id: list[int | None] = []
        self._r_id: list[int | None] = []
        for st in stages:
            self._w_id.append(self._add(st.W))
            self._g_id.append(self._add(st.G) if st.G is not None else None)
            self._r_id.append(self._add(st.R) if st.R is not None else None)
        self._w_id.append(self._add(last))

    def _add(self, atom: Atom) -> int:
        self.atoms.append(atom)
        return len(self.atoms) - 1

    # ------------------------------------------------------------ structure
    @property
    def depth(self) -> int:
        """L: number of activation stages (the last layer W_L is not counted)."""
        return len(self.stages)

    @property
    def num_classes(self) -> int:
        return self.last.out_numel

    def W(self, k: int) -> Atom:
        return self.stages[k].W if k < self.depth else self.last

    def w_id(self, k: int) -> int:
        return self._w_id[k]

    def span(self, s: int, e: int) -> Span:
        """The span (s, e) as scalar x atoms (see module docstring)."""
        if not 0 <= s <= e <= self.depth:
            raise ValueError(f"span ({s}, {e}) outside 0 <= s <= e <= {self.depth}")
        scalar = 1.0
        atoms: list[int] = []
        if s >= 1 and self.stages[s - 1].G is not None:
            atoms.append(self._g_id[s - 1])  # type: ignore[arg-type]
        for i in range(s, e):
            st = self.stages[i]
            if st.residual:
                atoms.append(self._r_id[i])  # type: ignore[arg-type]
            else:
                scalar *= st.c
                atoms.append(self._w_id[i])
        atoms.append(self._w_id[e])
        first = self.atoms[atoms[0]]
        return Span(s, e, scalar, tuple(atoms), first.in_shape, self.W(e).out_shape)

    def spans(self, last: bool = False) -> list[Span]:
        """Every span needed by Eq. 19: hidden ones (e < L) and, with ``last``, those ending at W_L."""
        top = self.depth if last else self.depth - 1
        out = []
        for e in range(0, top + 1):
            for s in range(0, e + 1):
                if s >= 1 and self.stages[s - 1].d == 0:
                    continue  # multiplied by d_{s-1} = 0 in Eq. 19
                out.append(self.span(s, e))
        return out

    def naive(self) -> float:
        """Product of per-stage naive bounds and ||W_L|| (Eq. 13 layer by layer): an upper bound."""
        out = self.last.norm_upper()
        for st in self.stages:
            out *= st.naive()
        return out * (1 + 4 * (self.depth + 1) * U64)

    # ------------------------------------------------------------ sweeps
    def _start_input(self, s: int, u: Tensor) -> Tensor:
        """Vectors in the input space of span (s, .) -> x_s space (apply G_{s-1} if residual)."""
        if s >= 1 and self.stages[s - 1].G is not None:
            return self.stages[s - 1].G.forward(u)  # type: ignore[union-attr]
        return u

    def sweep_forward(self, spans: Sequence[Span], u: Sequence[Tensor], state: SweepState | None = None) -> list[Tensor]:
        """``span_i(u_i)`` for every span at once, scalars excluded; u_i (B_i, *in_shape_i).

        Layer k runs one W_k call on every vector that reaches x_k (plus one G_k call for residual
        layers): L + 1 sequential steps whatever the number of spans.
        """
        out: list[Tensor | None] = [None] * len(spans)
        carry: list[tuple[int, Tensor]] = []  # (span index, vectors in x_k space)
        for k in range(0, self.depth + 1):
            carry = carry + [(i, self._start_input(sp.s, u[i])) for i, sp in enumerate(spans) if sp.s == k]
            if not carry:
                continue
            sizes = [t.shape[0] for _, t in carry]
            xk = torch.cat([t.reshape(t.shape[0], *self.W(k).in_shape) for _, t in carry])
            yk = self.W(k).forward(xk)
            if state is not None:
                state.calls += 1
                state.batch_sizes.append(int(xk.shape[0]))
            parts_y = torch.split(yk, sizes)
            parts_x = torch.split(xk, sizes)
            nxt = []
            st = self.stages[k] if k < self.depth else None
            for (i, _), py, px in zip(carry, parts_y, parts_x):
                if spans[i].e == k:
                    out[i] = py
                elif st is not None and st.residual:
                    nxt.append((i, st.h * px + st.c * st.G.forward(py)))  # type: ignore[union-attr]
                else:
                    nxt.append((i, py))
            carry = nxt
        return out  # type: ignore[return-value]

    def sweep_adjoint(self, spans: Sequence[Span], v: Sequence[Tensor], state: SweepState | None = None) -> list[Tensor]:
        """``span_i^T(v_i)`` for every span at once, scalars excluded; v_i (B_i, *out_shape_i).

        Mirror image of :meth:`sweep_forward`: one W_k^T call per layer for every vector there.
        """
        out: list[Tensor | None] = [None] * len(spans)
        carry: list[tuple[int, Tensor]] = []  # (span index, vectors in x_{k+1} space)
        for k in range(self.depth, -1, -1):
            st = self.stages[k] if k < self.depth else None
            items: list[tuple[int, Tensor]] = []
            resid_h: list[Tensor | None] = []
            for i, z in carry:
                if st is not None and st.residual:
                    items.append((i, st.c * st.G.adjoint(z)))  # type: ignore[union-attr]
                    resid_h.append(st.h * z)
                else:
                    items.append((i, z))
                    resid_h.append(None)
            for i, sp in enumerate(spans):
                if sp.e == k:
                    items.append((i, v[i]))
                    resid_h.append(None)
            if not items:
                continue
            sizes = [t.shape[0] for _, t in items]
            yk = torch.cat([t.reshape(t.shape[0], *self.W(k).out_shape) for _, t in items])
            xk = self.W(k).adjoint(yk)
            if state is not None:
                state.calls += 1
                state.batch_sizes.append(int(yk.shape[0]))
            carry = []
            for (i, _), px, rh in zip(items, torch.split(xk, sizes), resid_h):
                if rh is not None:
                    px = px + rh.reshape(px.shape)
                if spans[i].s == k:
                    if k >= 1 and self.stages[k - 1].G is not None:
                        out[i] = self.stages[k - 1].G.adjoint(px)  # type: ignore[union-attr]
                    else:
                        out[i] = px
                else:
                    carry.append((i, px))
        return out  # type: ignore[return-value]

    def rows(self, k_rows: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Rows of every span (s, L), s = 0..L, in one adjoint sweep of the K basis vectors of the
        logit space (or the given (R, K) rows): ``rows[s]`` (R, *in_shape of span (s, L)), scalars
        excluded, and ``suffix[t]`` = rows of ``W_L Hhat_{L-1} ... Hhat_t`` in x_t space (before
        ``G_{t-1}``; equal to ``rows[t]`` for plain layers)."""
        last = self.last
        ref = _ref_tensor(last)
        if k_rows is None:
            k_rows = torch.eye(self.num_classes, dtype=ref.dtype, device=ref.device)
        rows: list[Tensor] = [None] * (self.depth + 1)  # type: ignore[list-item]
        suffix: list[Tensor] = [None] * (self.depth + 1)  # type: ignore[list-item]
        z = last.adjoint(k_rows.reshape(k_rows.shape[0], *last.out_shape))
        for t in range(self.depth, -1, -1):
            suffix[t] = z
            if t >= 1 and self.stages[t - 1].G is not None:
                rows[t] = self.stages[t - 1].G.adjoint(z)  # type: ignore[union-attr]
            else:
                rows[t] = z
            if t == 0:
                break
            st = self.stages[t - 1]
            if st.residual:
                z = st.R.adjoint(z)  # type: ignore[union-attr]
            else:
                z = st.W.adjoint(z.reshape(z.shape[0], *st.W.out_shape))
        return rows, suffix

    def row_scalar(self, s: int) -> float:
        """Scalar of span (s, L)."""
        return self.span(s, self.depth).scalar

    # ------------------------------------------------------------ building
    @classmethod
    def from_model(cls, model: nn.Module, in_shape: Sequence[int] | None = None) -> "LTNet":
        """Read ``model`` with :func:`lipcert.bounds.network.parse` (an ``nn.Sequential`` or any
        module whose children run in order); an affine layer without an activation after it is a
        stage with slopes (1, 1)."""
        parsed = parse(model, in_shape, error=LTError, reader="LipLT")
        stages: list[LTStage] = []
        blocks = parsed.blocks
        for k, blk in enumerate(blocks[:-1]):
            if blk.kind == "residual":
                if k == 0 and blk.normalize is not None:
                    raise LTError("a residual layer cannot follow InputNormalize directly; put a Linear layer first")
                stages.append(_residual_stage(blk.main, blk.in_shape, k))
                continue
            a, b = slope_bounds(blk.act)
            stages.append(LTStage(W=_block_op(blk, f"W{k}"), act=blk.act, alpha=a, beta=b, module=blk.main))
        net = cls(stages, _block_op(blocks[-1], f"W{len(stages)}"), parsed.in_shape)
        net.network = parsed
        return net


def _block_op(blk: Block, name: str) -> LinearOp:
    try:
        op = blk.op()
    except UnsupportedLayer as err:
        raise LTError(str(err)) from None
    op.name = name
    return op


def _ref_tensor(atom: LinearOp) -> Tensor:
    if isinstance(atom, (DenseOp, ConvOp)):
        return atom.weight
    if isinstance(atom, ResidualGAtom):
        return atom.weight
    if isinstance(atom, HatAtom):
        return _ref_tensor(atom.w)
    raise TypeError(type(atom))


def _residual_stage(mod: nn.Module, shape: tuple[int, ...], k: int) -> LTStage:
    parts = mod.liplt_parts()
    weight, t, h, g, act = parts["weight"], parts["t"], parts["h"], parts["g"], parts["act"]
    if math.prod(shape) != weight.shape[1]:
        raise LTError(f"residual layer {k} takes {weight.shape[1]} features but receives shape {shape}")
    a, b = slope_bounds(act)
    w_atom = DenseOp(weight, tuple(shape), name=f"W{k}")
    g_atom = ResidualGAtom(weight, t, g, tuple(shape), f"G{k}")
    st = LTStage(W=w_atom, act=act, alpha=a, beta=b, h=h, G=g_atom, module=mod)
    st.R = HatAtom(h, st.c, w_atom, g_atom, f"R{k}")
    return st


__all__ = [
    "Atom",
    "HatAtom",
    "LTError",
    "LTNet",
    "LTStage",
    "ResidualGAtom",
    "SLOPES",
    "Span",
    "SweepState",
    "register_slopes",
    "scalar",
    "slope_bounds",
]
