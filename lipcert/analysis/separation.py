"""r-separation of a dataset (Zhang22 Def. 3.1, Table 1) and the nearest-neighbour l-inf-dist nets that
certify every r-separated training set (Zhang22 Thm 3.2 / A.2).

A labelled set is r-separated in l-inf if differently labelled points are at least 2r apart, so
the largest such r is half the minimum inter-class distance. Robust accuracy 100% at eps = r is
then possible, and :func:`nearest_neighbour_net` builds an l-inf-dist net that achieves it on the
training set: its logits are ``-min_{i: y_i = j} ||x - x_i||_inf`` (Zhang22 Eq. 4).

Distances are exact: inputs are converted to float64, where the difference of two float32 pixel
values is exact and max/abs are exact, so the reported minima are the exact minima of the
float32 data. Work is chunked (pairs of classes, at most ~4M distances at a time) and uses the
l-inf distance kernel, so it runs on a CPU within memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..nn.kernels import linf_dist_argmax

#: Upper bound on the number of entries of one distance block.
BLOCK = 1 << 22


@dataclass
class Separation:
    """Minimum l-inf distances between differently labelled points, and r = min_dist_train / 2."""

    min_dist_train: float
    min_dist_test_train: float | None
    r: float
    train_pair: tuple[int, int]  # indices (in the train split) of a closest differently labelled pair
    test_pair: tuple[int, int] | None  # (test index, train index)
    n_train: int
    n_test: int | None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def min_interclass_distance(a: Tensor, ya: Tensor, b: Tensor, yb: Tensor) -> tuple[float, tuple[int, int]]:
    """Exact ``min ||a_i - b_j||_inf`` over pairs with ``ya[i] != yb[j]``, and the pair (i, j).

    ``inf`` (and (-1, -1)) if there is no such pair.
    """
    a = a.flatten(1).to(torch.float64)
    b = b.flatten(1).to(torch.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"points have different sizes: {a.shape[1]} and {b.shape[1]}")
    best, pair = math.inf, (-1, -1)
    step = max(1, BLOCK // max(1, b.shape[0]))
    for s in range(0, a.shape[0], step):
        d, _ = linf_dist_argmax(a[s : s + step].contiguous(), b)
        d = d.masked_fill(ya[s : s + step, None] == yb[None, :], math.inf)
        v, flat = d.flatten().min(0)
        if float(v) < best:
            best = float(v)
            i, j = divmod(int(flat), d.shape[1])
            pair = (s + i, j)
    return best, pair


@torch.no_grad()
def min_interclass_distance_within(x: Tensor, y: Tensor) -> tuple[float, tuple[int, int]]:
    """Exact minimum l-inf distance between differently labelled points of one set (each pair once)."""
    x = x.flatten(1)
    best, pair = math.inf, (-1, -1)
    classes = torch.unique(y).tolist()
    for c in classes:
        ia = (y == c).nonzero()[:, 0]
        ib = (y > c).nonzero()[:, 0]
        if ia.numel() == 0 or ib.numel() == 0:
            continue
        v, (i, j) = min_interclass_distance(x[ia], y[ia], x[ib], y[ib])
        if v < best:
            best, pair = v, (int(ia[i]), int(ib[j]))
    return best, pair


def r_separation(x_train: Tensor, y_train: Tensor, x_test: Tensor | None = None, y_test: Tensor | None = None) -> Separation:
    """r-separation of a training set (and the closest differently labelled train point of any test point)."""
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"{x_train.shape[0]} training points but {y_train.shape[0]} labels")
    d_train, p_train = min_interclass_distance_within(x_train, y_train)
    d_test, p_test = None, None
    if x_test is not None:
        d_test, p_test = min_interclass_distance(x_test, y_test, x_train, y_train)
    return Separation(
        min_dist_train=d_train, min_dist_test_train=d_test, r=d_train / 2, train_pair=p_train, test_pair=p_test,
        n_train=int(y_train.numel()), n_test=None if y_test is None else int(y_test.numel()),
    )


def _set(layer, weight: Tensor, bias: Tensor | None) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(bias if bias is not None else torch.zeros_like(layer.bias))


@torch.no_grad()
def nearest_neighbour_net(x: Tensor, y: Tensor, num_classes: int | None = None, layers: int = 2):
    """The l-inf-dist net of Zhang22 Thm 3.2 (``layers=2``) or Thm A.2 (``layers=L >= 3``) for (x, y).

    Its logits at every training point are ``-min_{i: y_i = j} ||x - x_i||_inf``, so the margin at
    x_i is the distance to the nearest differently labelled point: every training point of an
    r-separated set is certified (by the ordinary margin certificate, L = 1) at every eps < r.

    * 2 layers: hidden units ``||x - x_i||`` (weights x_i); output j has weights ``C [y_i = j]`` and
      bias ``-C`` with ``C = 4 max ||x_i||`` (Zhang22 Eq. 8).
    * L layers: hidden width ``2d + K + ceil(n / (L - 1))`` (Zhang22 Thm A.2): two copies of the input,
      K running minima ``h_j`` and the distances to one chunk of the data per layer; the constants
      are ``M = max |x|``, the initial ``h_j = x_1 - 4M`` (below every distance) and ``C = 16M``.

    The returned model is a ``linf_nearest_neighbour`` registry model (checkpoints work) with
    float32 weights: exact for the 2-layer net's distances; the L-layer net stores ``x_i -+ C``,
    which float32 rounds by up to ``16 M 2^-24`` (about 1e-6 for [0, 1] data), so its logits match
    the nearest-neighbour distances to that accuracy (the certificate accounts for the weights as
    stored).
    """
    from .. import models

    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need matching, non-empty x and y, got {x.shape[0]} and {y.shape[0]} rows")
    if layers < 2:
        raise ValueError(f"the construction needs at least 2 layers, got {layers}")
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in [0, {k})")
    in_shape = list(x.shape[1:])
    flat = x.flatten(1).double()
    n, d = flat.shape
    m_abs = max(float(flat.abs().max()), 1e-6)
    onehot = torch.zeros(k, n, dtype=torch.float64)
    onehot[y.long(), torch.arange(n)] = 1.0
    if layers == 2:
        net = models.build("linf_nearest_neighbour", in_shape=in_shape, num_classes=k, widths=[n])
        c = 4.0 * m_abs
        _set(net[2], flat, None)
        _set(net[3], c * onehot, torch.full((k,), -c, dtype=torch.float64))
        return net.eval()

    s = math.ceil(n / (layers - 1))
    width = 2 * d + k + s
    net = models.build("linf_nearest_neighbour", in_shape=in_shape, num_classes=k, widths=[width] * (layers - 1))
    lin = [m for m in net if hasattr(m, "weight")]
    big_b, big_c = 4.0 * m_abs, 16.0 * m_abs
    i_sl, it_sl, o_sl, s_sl = slice(0, d), slice(d, 2 * d), slice(2 * d, 2 * d + k), slice(2 * d + k, width)
    eye = torch.eye(d, dtype=torch.float64)

    def chunk(l: int) -> tuple[Tensor, Tensor]:  # samples of chunk l (1-based) and their labels
        lo, hi = (l - 1) * s, min(l * s, n)
        return flat[lo:hi], y[lo:hi].long()

    # layer 1: input x (d) -> [I, I~, O, S(chunk 1)]
    w = torch.zeros(width, d, dtype=torch.float64)
    b = torch.zeros(width, dtype=torch.float64)
    w[i_sl], b[i_sl] = -big_c * eye, -big_c  # fetch x_k
    w[it_sl], b[it_sl] = -big_c * eye, -big_c
    w[o_sl, 0], b[o_sl] = -big_c, -big_c - big_b  # h_j,0 = x_1 - B
    pts, _ = chunk(1)
    w[s_sl][: len(pts)] = pts  # ||x - x_i||
    if len(pts) < s:  # unused slots fetch x_1 (harmless values in [-M, M])
        w[2 * d + k + len(pts) :, 0] = -big_c
        b[2 * d + k + len(pts) :] = -big_c
    _set(lin[0], w, b)

    def merge_rows(w: Tensor, b: Tensor, row0: int, prev_labels: Tensor) -> None:
        """Rows row0..row0+K (the O units): ``h_j <- max(h_j, max_{i in previous chunk, y_i = j} -||x - x_i||)``
        as ``-C + max(|h_j + C|, |d_i - C|, ...)`` with weight -C on h_j and C on the class-j distances."""
        for j in range(k):
            w[row0 + j, 2 * d + j] = -big_c
            w[row0 + j, 2 * d + k + (prev_labels == j).nonzero()[:, 0]] = big_c
            b[row0 + j] = -big_c

    for l in range(2, layers):
        w = torch.zeros(width, width, dtype=torch.float64)
        b = torch.zeros(width, dtype=torch.float64)
        w[i_sl, i_sl], b[i_sl] = -big_c * eye, -big_c
        w[it_sl, i_sl], b[it_sl] = -big_c * eye, -big_c
        _, prev_labels = chunk(l - 1)
        merge_rows(w, b, 2 * d, prev_labels)
        pts, _ = chunk(l)
        rows = slice(2 * d + k, 2 * d + k + len(pts))
        w[rows, i_sl] = pts - big_c
        w[rows, it_sl] = pts + big_c
        b[rows] = -big_c
        if len(pts) < s:
            w[2 * d + k + len(pts) :, 0] = -big_c
            b[2 * d + k + len(pts) :] = -big_c
        _set(lin[l - 1], w, b)

    w = torch.zeros(k, width, dtype=torch.float64)
    b = torch.zeros(k, dtype=torch.float64)
    _, prev_labels = chunk(layers - 1)
    merge_rows(w, b, 0, prev_labels)
    _set(lin[-1], w, b)
    return net.eval()
