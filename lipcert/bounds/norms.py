"""Provable upper bounds on spectral norms, computed in float64 with a rigorous rounding slack.

Power iteration approaches ||W||_2 from *below*, so a certificate can never rest on it. The
functions here return numbers that are >= the true spectral norm of the stored weights:

* :func:`dense_norm_upper` -- the largest singular value from LAPACK's SVD in float64 ("exact"
  up to a rigorous slack). LAPACK's SVD is backward stable: the computed values are the exact
  singular values of W + E with ||E||_2 <= p(m, n) u ||W||_2, so by Weyl's inequality adding
  ``64 max(m, n) u ||W||_F`` (>= that perturbation for any p(m, n) <= 64 max(m, n)) bounds the
  true value.

* :func:`conv_norm_upper` -- a provable upper bound for a zero-padded, strided 2-D convolution on
  its real input shape. Proof sketch:

  1. *Polyphase.* With ``xp`` the zero-padded input, ``y[o, i, j] = sum_{c,p,q} K[o,c,p,q]
     xp[c, s1 i + p, s2 j + q]``. Writing ``p = s1 a + r`` and ``q = s2 b + t`` turns this into a
     stride-1 *valid* cross-correlation of ``X'[(c,r,t), m, n] = xp[c, s1 m + r, s2 n + t]`` with
     ``K'[o, (c,r,t), a, b] = K[o, c, s1 a + r, s2 b + t]`` (zero outside the kernel). The map
     ``x -> X'`` only places every input entry once among zeros, so ``||X'|| = ||x||``.
  2. *Circulant embedding.* On an ``M1 x M2`` grid with ``M >= out + ceil(k / s) - 1`` (and
     ``s M >=`` the padded size) no index of a valid output wraps around, so the valid
     correlation is a row-submatrix of the circular correlation with kernel K' on that grid, and
     a submatrix has a norm no larger than the whole (Huang21 Prop. 1).
  3. *Fourier.* The circular correlation is block-diagonalised by the 2-D DFT (unitary), so its
     norm is ``max_w ||K'^(w)||_2`` over the ``M1 M2`` grid frequencies, ``K'^`` being the
     (c_out x c_in s1 s2) matrix of DFT coefficients (Sedghi et al. 2019).

  Hence ||conv|| <= max_w ||K'^(w)||_2. Floating point: the FFT in float64 has a normwise
  relative error below ``1000 log2(M1 M2) u`` (Higham, ASNA Thm 24.2, with a wide margin for
  mixed radices), which perturbs each frequency's matrix by at most that times
  ``sqrt(M1 M2) ||K'||_F`` in spectral norm (Parseval); the batched SVD adds the dense slack
  above. Both slacks are added. The bound is tight up to the boundary effect of zero padding
  (a few percent on 28 x 28 / 32 x 32 inputs); tests compare it with the exact SVD of the
  materialised operator on small shapes.

* :func:`reduced_dense_norm_upper` -- per-sample exact norms of masked dense matrices
  ``diag(out_mask) W diag(in_mask)`` (the reduced matrices of Huang21 Eq. 6) via the eigenvalues of
  the smaller Gram matrix in float64 plus a rigorous slack for forming the Gram matrix and for the
  symmetric eigensolver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..numerics import U64, round_up  # noqa: F401  (re-exported: the bounds' rounding constants)


def spectral_norms(mats: Tensor) -> Tensor:
    """Largest singular value of each matrix in a (..., m, n) float64/complex128 stack, via LAPACK
    through numpy (an order of magnitude faster than torch's CPU SVD on this kind of machine)."""
    arr = mats.detach().cpu().numpy()
    return torch.from_numpy(np.linalg.svd(arr, compute_uv=False)[..., 0].copy()).to(mats.device)


def dense_norm_upper(weight: Tensor) -> float:
    """Rigorous upper bound on ||W||_2 of a dense matrix (float64 SVD + slack); "exact" up to ~1e-12."""
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    if w.numel() == 0:
        return 0.0
    sigma = float(spectral_norms(w))
    fro = float(torch.linalg.matrix_norm(w, ord="fro"))
    slack = 64 * max(w.shape) * U64 * fro
    return round_up(sigma + slack)


def polyphase_kernel(weight: Tensor, stride: Sequence[int]) -> Tensor:
    """``K'[o, (c, r, t), a, b] = K[o, c, s1 a + r, s2 b + t]``: a strided conv as a stride-1 one."""
    s1, s2 = stride
    c_out, c_in, kh, kw = weight.shape
    ka, kb = -(-kh // s1), -(-kw // s2)
    out = weight.new_zeros(c_out, c_in, s1, s2, ka, kb)
    for r in range(s1):
        for t in range(s2):
            sub = weight[:, :, r::s1, t::s2]
            out[:, :, r, t, : sub.shape[2], : sub.shape[3]] = sub
    return out.reshape(c_out, c_in * s1 * s2, ka, kb)


def conv_grid(in_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> tuple[int, int]:
    """Circular grid (M1, M2) on which the polyphase valid correlation embeds without wrap-around."""
    grid = []
    for n, k, s, p in zip(in_shape[-2:], kernel, stride, padding):
        padded = n + 2 * p
        out = (padded - k) // s + 1
        ka = -(-k // s)
        grid.append(max(-(-padded // s), out + ka - 1))
    return grid[0], grid[1]


def conv_frequency_norms(weight: Tensor, in_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """Spectral norms ``||K'^(w)||_2`` of every grid frequency (M1, M2), float64 (no slack)."""
    k64 = polyphase_kernel(weight.detach().to(torch.float64), stride)
    m1, m2 = conv_grid(in_shape, weight.shape[2:], stride, padding)
    spec = torch.fft.fft2(k64, s=(m1, m2))  # (c_out, c_in', M1, M2)
    mats = spec.permute(2, 3, 0, 1).reshape(m1 * m2, spec.shape[0], spec.shape[1])
    return spectral_norms(mats).view(m1, m2)


def conv_norm_upper(weight: Tensor, in_shape: Sequence[int], stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0)) -> float:
    """Rigorous upper bound on the spectral norm of ``conv2d(., weight, stride, padding)`` acting on
    inputs of shape ``in_shape`` (C, H, W) with zero padding (proof in the module docstring)."""
    stride, padding = tuple(stride), tuple(padding)
    norms = conv_frequency_norms(weight, in_shape, stride, padding)
    sigma = float(norms.max())
    m1, m2 = norms.shape
    k64 = weight.detach().to(torch.float64)
    fro = float(k64.norm())
    c_out, c_in_p = weight.shape[0], weight.shape[1] * stride[0] * stride[1]
    fft_slack = 1000 * math.log2(m1 * m2 + 1) * U64 * math.sqrt(m1 * m2) * fro
    svd_slack = 64 * max(c_out, c_in_p) * U64 * (sigma + fft_slack)
    return round_up(sigma + fft_slack + svd_slack)


def reduced_dense_norm_upper(weight: Tensor, in_mask: Tensor | None, out_mask: Tensor | None, chunk: int = 8,
                             rel: float = 0.0) -> Tensor:
    """Per-sample rigorous upper bounds on ``||diag(out_mask) W diag(in_mask)||_2`` (float64).

    ``weight`` (out, in); masks (B, in) / (B, out) of 0/1 (None = keep all). Uses the Gram matrix
    of the smaller side, ``G = Wm Wm^T`` or ``Wm^T Wm``; its computed entries are off by at most
    ``gamma_n (|Wm| |Wm|^T)_ij``, so ``||G^ - G||_2 <= gamma_n ||Wm||_F^2``, and the symmetric
    eigensolver is off by at most ``64 n u ||G^||_2``. ``rel``: an entrywise relative error of
    ``weight`` itself (a matrix a layer formed, or a folded input scale); the exact matrix's reduced
    norm is then at most ``rel ||Wm||_F`` above the computed one's.
    """
    w = weight.detach().to(torch.float64)
    out_f, in_f = w.shape
    batch = (in_mask if in_mask is not None else out_mask).shape[0] if (in_mask is not None or out_mask is not None) else 1
    dev = w.device
    im = torch.ones(batch, in_f, dtype=torch.float64, device=dev) if in_mask is None else in_mask.reshape(batch, -1).to(torch.float64)
    om = torch.ones(batch, out_f, dtype=torch.float64, device=dev) if out_mask is None else out_mask.reshape(batch, -1).to(torch.float64)
    result = torch.empty(batch, dtype=torch.float64, device=dev)
    small_out = out_f <= in_f
    n_inner = in_f if small_out else out_f
    n_gram = out_f if small_out else in_f
    gamma = n_inner * U64 / (1 - n_inner * U64)
    w2 = w.square()
    for s in range(0, batch, chunk):
        i_m, o_m = im[s : s + chunk], om[s : s + chunk]
        if small_out:
            wi = w.unsqueeze(0) * i_m.unsqueeze(1)  # (b, out, in)
            g = wi @ w.T  # W diag(i) W^T
            g = g * o_m.unsqueeze(2) * o_m.unsqueeze(1)
        else:
            wo = w.unsqueeze(0) * o_m.unsqueeze(2)
            g = wo.transpose(1, 2) @ w  # W^T diag(o) W
            g = g * i_m.unsqueeze(2) * i_m.unsqueeze(1)
        fro2 = ((i_m @ w2.T) * o_m).sum(dim=1)
        lam = torch.linalg.eigvalsh(g)[:, -1].clamp_min(0.0)
        lam_up = lam + gamma * fro2 * 1.01 + 64 * n_gram * U64 * lam
        up = lam_up.sqrt() * (1 + 8 * U64)
        if rel:
            up = (up + rel * fro2.sqrt() * (1 + (n_inner + n_gram + 4) * U64)) * (1 + 4 * U64)
        result[s : s + chunk] = up
    return result


__all__ = [
    "conv_frequency_norms",
    "conv_grid",
    "conv_norm_upper",
    "dense_norm_upper",
    "polyphase_kernel",
    "reduced_dense_norm_upper",
    "round_up",
]
