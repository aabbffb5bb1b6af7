"""CPU backend: the native kernels of ``cpu_kernels.cpp`` (see ``native.py``) as a custom op.

Registered as ``lipcert::lp_dist_cpu`` (see ``ops.py``). Inputs may be non-contiguous (they are
made contiguous, O((B + N) * D)); float32 and float64 are supported.

Error bounds beyond float32 rounding (float32, general real p, AVX-512 builds; see
:func:`skip_thresholds`): the forward skips terms ``(|t| / m)^p < 2^-24 / D``, which moves y by
< 2^-24 / p relative; the backward skips lanes ``|t| / y < 2^(-24 / (p - 1))``, which moves
``gx[b, i]`` by < ``2^-24 sum_n |g[b, n]|`` (``gw[n, i]``: ``2^-24 sum_b |g[b, n]|``).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import native, reference
from .ops import KernelImpl, define_lp_dist_op

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def _ptr(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _lib() -> ctypes.CDLL:
    lib = native.load()
    if lib is None:
        raise RuntimeError(f"native CPU kernels unavailable: {native.unavailable_reason()}")
    return lib


#: Below this many element-ops (~20 us of work) one thread is used: waking the OpenMP team
#: would cost more than it saves, and far more when other processes compete for the cores.
SERIAL_BELOW = 1 << 20


def _threads(work: int | None = None) -> int:
    if work is not None and work < SERIAL_BELOW:
        return 1
    return max(1, torch.get_num_threads())


def available() -> bool:
    """True when the native library is built and loaded (builds it on the first call)."""
    return native.load() is not None


def supports(x: Tensor) -> bool:
    """CPU float32/float64 tensors, when the native library is available."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and available()


def _check(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, str]:
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError("the cpu kernel backend needs CPU tensors; use LIPCERT_KERNEL=auto for other devices")
    if x.dtype not in _DTYPES or w.dtype != x.dtype:
        raise ValueError(f"the cpu kernel backend needs float32 or float64 x and w of one dtype, got {x.dtype} and {w.dtype}")
    return x.contiguous(), w.contiguous(), _DTYPES[x.dtype]


# ------------------------------------------------------------------ raw calls (no autograd)
def linf_forward(x: Tensor, w: Tensor, need_argmax: bool = True) -> tuple[Tensor, Tensor | None]:
    """p = inf values (B, N) and int32 argmax (lowest index among ties) or None."""
    x, w, dt = _check(x, w)
    (b, d), n = x.shape, w.shape[0]
    y = x.new_empty(b, n)
    am = torch.empty(b, n, dtype=torch.int32) if need_argmax else None
    if getattr(_lib(), f"lc_linf_fwd_{dt}")(_ptr(x), _ptr(w), b, n, d, _ptr(y), _ptr(am), _threads(b * n * d)):
        y, am = reference.linf_dist_forward(x, w)  # NaN inputs: the C code checked and did nothing
        return y, (am if need_argmax else None)
    return y, am


def lp_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Finite-p values (B, N), stable for p up to ~1000 (see cpu_kernels.cpp)."""
    x, w, dt = _check(x, w)
    (b, d), n = x.shape, w.shape[0]
    y = x.new_empty(b, n)
    if getattr(_lib(), f"lc_lp_fwd_{dt}")(_ptr(x), _ptr(w), b, n, d, float(p), _ptr(y), _threads(b * n * d)):
        return reference.lp_dist_forward(x, w, p)
    return y


def _grads(x: Tensor, w: Tensor, need_x: bool, need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    return (torch.empty_like(x) if need_x else None), (torch.empty_like(w) if need_w else None)


def linf_backward(g: Tensor, x: Tensor, w: Tensor, am: Tensor, need_x: bool, need_w: bool):
    """O(B*N) scatter backward of p = inf."""
    x, w, dt = _check(x, w)
    g = g.to(x.dtype).contiguous()
    am = am.to(torch.int32).contiguous()
    (b, d), n = x.shape, w.shape[0]
    gx, gw = _grads(x, w, need_x, need_w)
    if getattr(_lib(), f"lc_linf_bwd_{dt}")(_ptr(g), _ptr(x), _ptr(w), _ptr(am), b, n, d, _ptr(gx), _ptr(gw), _threads(b * n * d)):
        return reference.linf_dist_backward(g, x, w, am, need_x, need_w)
    return gx, gw


def lp_backward(g: Tensor, x: Tensor, w: Tensor, y: Tensor, p: float, need_x: bool, need_w: bool):
    """Dense finite-p backward ``sign(t) (|t| / y)^(p-1)`` (0 where y = 0); memory O((B + N) * D)."""
    x, w, dt = _check(x, w)
    g = g.to(x.dtype).contiguous()
    y = y.contiguous()
    (b, d), n = x.shape, w.shape[0]
    gx, gw = _grads(x, w, need_x, need_w)
    if getattr(_lib(), f"lc_lp_bwd_{dt}")(
        _ptr(g), _ptr(x), _ptr(w), _ptr(y), b, n, d, float(p), _ptr(gx), _ptr(gw), _threads(b * n * d)
    ):
        return reference.lp_dist_backward(g, x, w, y, p, need_x, need_w)
    return gx, gw


def skip_thresholds(p: float, d: int) -> tuple[float, float, bool]:
    """(theta_f, theta_b, used) of the float32 general-p kernels (``cpu_kernels.cpp``).

    Forward: a term (|t| / m)^p with |t| / m < theta_f is skipped (theta_f^p <= 2^-24 / d, so
    the skipped terms move y by < 2^-24 / p relative). Backward: a lane with |t| / y < theta_b
    is skipped (theta_b^(p-1) <= 2^-24, so gx[b, i] moves by < 2^-24 sum_n |g[b, n]|).
    ``used`` is False where the build has no AVX-512 (dense path, nothing skipped).
    """
    out = (ctypes.c_float * 2)()
    used = _lib().lc_skip_thresholds(float(p), int(d), out)
    return float(out[0]), float(out[1]), bool(used)


def pow_peak(reps: int = 2000, p: float = 20.5) -> float:
    """Measured powers/s of the general-p term ``exp2(p log2 a)`` on one thread (in-cache data):
    the cost of one finite-p term, against which the skipping kernels are judged."""
    return float(_lib().lc_pow_peak_f32(int(reps), float(p)))


def peak_element_ops(reps: int = 20000, threads: int | None = None) -> float:
    """Measured machine peak of the p = inf inner loop (element-ops/s, in-cache data)."""
    return float(_lib().lc_linf_peak_f32(int(reps), int(threads or _threads())))


# ------------------------------------------------------------------ custom op
def _linf_forward_argmax(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    y, am = linf_forward(x, w, need_argmax=True)
    assert am is not None
    return y, am


def _linf_values(x: Tensor, w: Tensor) -> Tensor:
    return linf_forward(x, w, need_argmax=False)[0]


IMPL = KernelImpl(
    linf_forward=_linf_forward_argmax,
    lp_forward=lp_forward,
    linf_backward=linf_backward,
    lp_backward=lp_backward,
    linf_values=_linf_values,
)

#: Differentiable ``lp_dist(x, w, p)`` through the custom op ``lipcert::lp_dist_cpu``.
lp_dist = define_lp_dist_op("lp_dist_cpu", "cpu", IMPL)


def linf_dist_argmax(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """p = inf values and int32 argmax, no autograd."""
    return _linf_forward_argmax(x, w)
