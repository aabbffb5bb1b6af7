"""Tests for lipcert/nn/kernels: every available backend equals the plain-torch reference.

Compared: values, int32 argmax (ties included), both gradients, on odd and non-contiguous
shapes, p in {1, 2, 8, 37.5, 1000, inf} (+ 3, 13, 20, 64 and 1.5 for the generic integer / real paths);
gradcheck in float64; memory of the fast path; the fallback when the native build is missing;
the custom ops under opcheck and torch.compile. Triton kernels run under TRITON_INTERPRET=1 on
CPU tensors in a subprocess (skipped without triton); real GPU tests are marked ``gpu``.
Bit-equality (torch.equal) is asserted only for p = inf values and argmax: a max of correctly
rounded |x - w| has no summation order, so it is exact on every CPU; finite p uses tolerances.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from lipcert.nn import kernels as K
from lipcert.nn.kernels import native, reference

ROOT = Path(__file__).resolve().parents[2]
INF = math.inf
PS = [1.0, 2.0, 8.0, 37.5, 1000.0, INF]
EXTRA_PS = [3.0, 13.0, 20.0, 64.0, 1.5]  # generic integer powers (odd, even, the largest) and the generic real power
HAVE_TRITON = True
try:
    import triton  # noqa: F401
except Exception:  # noqa: BLE001
    HAVE_TRITON = False


def cpu_backends() -> list[str]:
    """Fast backends that run on this machine's CPU (the reference is what they are compared to)."""
    names = []
    if K.BACKENDS["cpu"].supports(torch.empty(0)):
        names.append("cpu")
    return names


@contextlib.contextmanager
def backend(name: str):
    K.set_backend(name)
    try:
        yield
    finally:
        K.set_backend(None)


def run_both(name: str, x: torch.Tensor, w: torch.Tensor, p: float, g: torch.Tensor):
    """(y, gx, gw) through backend ``name`` and through the float64 reference."""
    xa, wa = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    with backend(name):
        y = K.lp_dist(xa, wa, p)
    y.backward(g.to(y.dtype))
    xr = x.detach().double().requires_grad_(True)
    wr = w.detach().double().requires_grad_(True)
    yr = reference.lp_dist(xr, wr, p)
    yr.backward(g.double())
    return (y.detach(), xa.grad, wa.grad), (yr.detach(), xr.grad, wr.grad)


def rel_to_max(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a.double() - b).abs().max().item() / scale if scale > 0 else (a.double() - b).abs().max().item()


def grad_tol(dtype: torch.dtype, p: float) -> float:
    """Finite-p gradients carry (p - 1) times the relative error of |t| / y."""
    if dtype == torch.float64:
        return 1e-11 * max(1.0, p if math.isfinite(p) else 1.0)
    return max(2e-6, 3e-7 * (p if math.isfinite(p) else 1.0))


def random_case(seed: int, dtype: torch.dtype, contiguous: bool):
    gen = torch.Generator().manual_seed(seed)
    b, n, d = (int(v) for v in torch.randint(1, 70, (3,), generator=gen))
    if contiguous:
        x = torch.randn(b, d, generator=gen, dtype=dtype)
        w = torch.randn(n, d, generator=gen, dtype=dtype)
    else:  # transposed views and strided slices
        x = torch.randn(d, b, generator=gen, dtype=dtype).t()
        w = torch.randn(n, 2 * d, generator=gen, dtype=dtype)[:, ::2]
        assert not x.is_contiguous() and not w.is_contiguous()
    g = torch.randn(b, n, generator=gen, dtype=dtype)
    return x, w, g


# ------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("p", PS + EXTRA_PS)
def test_reference_matches_naive(p):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 33, generator=gen, dtype=torch.float64) * 3
    w = torch.randn(11, 33, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(reference.lp_dist(x, w, p), reference.lp_dist_naive(x, w, p), rtol=1e-12, atol=0)


def test_reference_chunks_match_unchunked(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(5, 9, generator=gen), torch.randn(13, 9, generator=gen)
    full = reference.linf_dist_forward(x, w)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 50)  # forces ~13 chunks
    chunked = reference.linf_dist_forward(x, w)
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


# ------------------------------------------------------------------ fast CPU backends
def test_native_cpu_backend_is_available_here():
    """This project's CI machine has g++: the native backend must build, not silently fall back."""
    if os.environ.get("LIPCERT_NO_NATIVE", "") not in ("", "0"):
        pytest.skip("LIPCERT_NO_NATIVE is set: the suite runs on the reference kernels")
    assert "cpu" in cpu_backends(), native.unavailable_reason()
    assert K.select_backend(torch.empty(0)).name == "cpu"
    assert "cpu (native" in K.backend_info()


@pytest.fixture(params=["serial", "threaded"])
def threading_mode(request, monkeypatch):
    """Small test shapes run single-threaded by default; also force the multi-threaded paths."""
    from lipcert.nn.kernels import cpu

    if request.param == "threaded":
        if torch.get_num_threads() < 2:
            pytest.skip("needs >= 2 torch threads")
        monkeypatch.setattr(cpu, "SERIAL_BELOW", 0)
    return request.param


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_backend_matches_reference_random(name, dtype, seed, threading_mode):
    x, w, g = random_case(seed, dtype, contiguous=seed % 2 == 0)
    for p in PS + EXTRA_PS:
        (y, gx, gw), (yr, gxr, gwr) = run_both(name, x, w, p, g)
        assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
        ytol = 2e-6 if dtype == torch.float32 else 1e-13
        assert ((y.double() - yr).abs() / yr.abs().clamp_min(1e-30)).max().item() < ytol, p
        assert rel_to_max(gx, gxr) < grad_tol(dtype, p), (p, rel_to_max(gx, gxr))
        assert rel_to_max(gw, gwr) < grad_tol(dtype, p), (p, rel_to_max(gw, gwr))


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 16), (6, 32, 33), (13, 1, 70), (1, 50, 2), (17, 33, 100)])
def test_linf_exact_with_ties(name, dtype, shape, threading_mode):
    """Integer-valued inputs have many tied maxima: values and argmax must equal the reference exactly."""
    b, n, d = shape
    gen = torch.Generator().manual_seed(b * 1000 + n * 10 + d)
    x = torch.randint(-2, 3, (b, d), generator=gen).to(dtype)
    w = torch.randint(-2, 3, (n, d), generator=gen).to(dtype)
    w[0] = x[0]  # one all-zero difference row: value 0, argmax 0
    with backend(name):
        y, am = K.linf_dist_argmax(x, w)
    yr, amr = reference.linf_dist_forward(x, w)
    assert am.dtype == torch.int32
    assert torch.equal(y, yr)
    assert torch.equal(am, amr)
    assert y[0, 0] == 0 and am[0, 0] == 0
    # the scatter backward through the autograd path, exact in float64
    g = torch.randn(b, n, generator=gen, dtype=dtype)
    (y2, gx, gw), (_, gxr, gwr) = run_both(name, x, w, INF, g)
    torch.testing.assert_close(gx.double(), gxr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw.double(), gwr, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", cpu_backends())
def test_inference_path_without_argmax(name):
    """Under no_grad (or inputs without grad) p = inf skips the argmax; values stay exact."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(-3, 4, (29, 77), generator=gen).float()
    w = torch.randn(45, 77, generator=gen, requires_grad=True)
    yr = reference.linf_dist_forward(x, w.detach())[0]
    with backend(name):
        with torch.no_grad():
            y1 = K.lp_dist(x, w, INF)
        y2 = K.lp_dist(x, w.detach(), INF)
        y3 = K.lp_dist(x, w, INF)  # needs grad: the argmax path
    assert not y1.requires_grad and y3.requires_grad
    assert torch.equal(y1, yr) and torch.equal(y2, yr) and torch.equal(y3.detach(), yr)


@pytest.mark.parametrize("name", cpu_backends())
def test_linf_ties_at_scale(name, threading_mode):
    """A shape with full register tiles and D > one argmax chunk: ties resolved to the lowest index."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-1, 2, (37, 301), generator=gen).float()
    w = torch.randint(-1, 2, (70, 301), generator=gen).float()
    with backend(name):
        y, am = K.linf_dist_argmax(x, w)
    yr, amr = reference.linf_dist_forward(x, w)
    assert torch.equal(y, yr) and torch.equal(am, amr)
    assert (am > 0).any()  # the test would not see a wrong tie rule if every argmax were 0


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", [1.0, 2.0, 8.0])
@pytest.mark.parametrize("scale", [1e-7, 1e6, 1e30])
def test_unscaled_fast_path_falls_back_out_of_range(name, p, scale):
    """p in {1, 2, 8} sums |t|^p without scaling; tiny/huge values must still be accurate and finite."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(9, 40, generator=gen) * scale
    w = torch.randn(10, 40, generator=gen) * scale
    w[1, :] = x[1, :] + scale * 1e-9  # an almost-zero distance among normal ones
    with backend(name):
        y = K.lp_dist(x, w, p)
    yr = reference.lp_dist(x.double(), w.double(), p)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), yr, rtol=2e-6, atol=0)


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", [8.0, 37.5, 1000.0])
def test_large_p_float32_is_finite_and_accurate(name, p):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(20, 200, generator=gen) * 50
    w = torch.randn(30, 200, generator=gen) * 50
    g = torch.randn(20, 30, generator=gen)
    (y, gx, gw), (yr, gxr, gwr) = run_both(name, x, w, p, g)
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert ((y.double() - yr).abs() / yr).max() < 2e-6
    assert rel_to_max(gx, gxr) < grad_tol(torch.float32, p)
    assert rel_to_max(gw, gwr) < grad_tol(torch.float32, p)


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", [1.0, 2.0, 8.0, 37.5, INF])
def test_zero_distance_has_zero_gradient(name, p):
    x = torch.randn(3, 5)
    w = x[[0, 2]].clone()  # y[0, 0] = y[2, 1] = 0
    g = torch.ones(3, 2)
    (y, gx, gw), (yr, gxr, gwr) = run_both(name, x, w, p, g)
    assert y[0, 0] == 0 and y[2, 1] == 0
    torch.testing.assert_close(gx.double(), gxr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw.double(), gwr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", [2.0, 8.0, INF])
def test_single_gradient_requested(name, p):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 19, generator=gen)
    w = torch.randn(21, 19, generator=gen, requires_grad=True)
    with backend(name):
        K.lp_dist(x, w, p).sum().backward()
    wr = w.detach().double().requires_grad_(True)
    reference.lp_dist(x.double(), wr, p).sum().backward()
    assert x.grad is None
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", [INF, 1.0, 8.0, 37.5])
def test_nan_input_propagates_like_reference(name, p):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    x[1, 3] = float("nan")
    g = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    (y, gx, gw), (yr, gxr, gwr) = run_both(name, x, w, p, g)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()
    torch.testing.assert_close(y, yr, equal_nan=True)
    torch.testing.assert_close(gx, gxr, equal_nan=True)
    torch.testing.assert_close(gw, gwr, equal_nan=True)


@pytest.mark.parametrize("name", cpu_backends())
@pytest.mark.parametrize("p", PS + EXTRA_PS)
def test_gradcheck_float64(name, p):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    with backend(name):
        assert torch.autograd.gradcheck(lambda a, b: K.lp_dist(a, b, p), (x, w), eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ memory
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from lipcert.nn import kernels as K
    K.set_backend("cpu")
    out = {}
    for (b, d, n) in [(64, 2048, 4096), (512, 784, 1024)]:
        x = torch.randn(b, d, requires_grad=True)
        w = torch.randn(n, d, requires_grad=True)
        K.lp_dist(x[:1], w[:1], 8.0)  # load the library, warm up allocators
        for p in (float("inf"), 8.0, 37.5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            y = K.lp_dist(x, w, p)
            y.backward(torch.ones_like(y))
            x.grad = w.grad = None
            del y
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out[f"{b},{d},{n},{p}"] = (after - before) / 1024.0  # MiB
    print(json.dumps(out))
    """
)


def test_fast_path_memory_is_not_bnd():
    """(64, 2048, 4096) would need 2 GiB for the B*N*D difference and (512, 784, 1024) 1.6 GiB;
    the fast path must stay far below (peak RSS growth, measured in a fresh process)."""
    if "cpu" not in cpu_backends():
        pytest.skip("native backend unavailable")
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    growth = json.loads(res.stdout.strip().splitlines()[-1])
    for key, mib in growth.items():
        limit = 100.0 if key.startswith("512,") else 250.0
        assert mib < limit, (key, mib)


# ------------------------------------------------------------------ fallback without native build
@pytest.fixture
def native_state(monkeypatch):
    monkeypatch.delenv("LIPCERT_NO_NATIVE", raising=False)  # these tests drive the build themselves
    native._reset_for_tests()
    yield
    native._reset_for_tests()


def test_fallback_without_compiler(native_state, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # no cached build there
    monkeypatch.setattr(native, "_compiler", lambda: None)
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(5, 6)
    with pytest.warns(RuntimeWarning, match="native CPU l_p-distance kernels unavailable.*no C\\+\\+ compiler"):
        y = K.lp_dist(x, w, 8.0)
    assert K.select_backend(x).name == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the notice is emitted once per process only
        y2 = K.lp_dist(x, w, INF)
    torch.testing.assert_close(y, reference.lp_dist(x, w, 8.0))
    torch.testing.assert_close(y2, reference.lp_dist(x, w, INF))
    assert "native unavailable: RuntimeError: no C++ compiler" in K.backend_info()
    with pytest.raises(ValueError, match="backend 'cpu' cannot run"):
        with backend("cpu"):
            K.lp_dist(x, w, 8.0)
    assert not list(tmp_path.rglob("*.so"))


def test_fallback_when_disabled(native_state, monkeypatch):
    monkeypatch.setenv("LIPCERT_NO_NATIVE", "1")
    with pytest.warns(RuntimeWarning, match="LIPCERT_NO_NATIVE"):
        K.lp_dist(torch.randn(2, 3), torch.randn(4, 3), 2.0)


def test_build_failure_is_reported(native_state, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native, "_compiler", lambda: "false")
    assert native.load() is None
    assert "failed" in native.unavailable_reason()


def test_build_from_scratch(native_state, monkeypatch, tmp_path):
    """A clean cache builds the library (this is what a fresh install does) and reports the time."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lib = native.load()
    assert lib is not None, native.unavailable_reason()
    assert native.build_seconds() is not None and native.build_seconds() < 120
    assert len(list(tmp_path.rglob("lipcert_cpu_kernels.so"))) == 1


# ------------------------------------------------------------------ custom ops / torch.compile
@pytest.mark.parametrize("p", [INF, 8.0, 37.5])
def test_opcheck_cpu_op(p):
    if "cpu" not in cpu_backends():
        pytest.skip("native backend unavailable")
    from lipcert.nn.kernels import cpu

    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(cpu.lp_dist.op, (x, w, p))
    if math.isinf(p):
        torch.library.opcheck(cpu.lp_dist.values_op, (x.detach(), w.detach()))


def test_torch_compile_tiny_model():
    if "cpu" not in cpu_backends():
        pytest.skip("native backend unavailable")
    from lipcert.nn.linf import LinfDistLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(LinfDistLinear(12, 16), LinfDistLinear(16, 3, bias=True))
    x = torch.randn(8, 12)
    with torch.no_grad():  # inference graph: p = inf uses the values-only op
        torch.testing.assert_close(torch.compile(model, backend="aot_eager", fullgraph=True)(x), model(x))
    for p in (INF, 8.0):
        for m in model:
            m.p = p
        model.zero_grad()
        eager = model(x)
        eager.sum().backward()
        ref_grads = [q.grad.clone() for q in model.parameters()]
        model.zero_grad()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        out = compiled(x)
        out.sum().backward()
        torch.testing.assert_close(out, eager)
        for q, r in zip(model.parameters(), ref_grads):
            torch.testing.assert_close(q.grad, r)
    torch._dynamo.reset()


def test_torch_compile_inductor():
    """Same with the default inductor backend (generates and compiles C++: ~15 s on a cold cache)."""
    from lipcert.nn.linf import LinfDistLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(LinfDistLinear(12, 16), LinfDistLinear(16, 3, bias=True))
    x = torch.randn(8, 12)
    eager = model(x)
    eager.sum().backward()
    ref_grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    out = torch.compile(model, fullgraph=True)(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for q, r in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(q.grad, r)
    torch._dynamo.reset()


# ------------------------------------------------------------------ triton (interpreter on CPU)
_TRITON_SCRIPT = textwrap.dedent(
    """
    import math, torch
    from lipcert.nn.kernels import reference as R, triton_backend as T
    assert T.HAVE_TRITON
    torch.manual_seed(0)
    fails = []
    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    for (b, n, d) in [(9, 13, 21), (1, 1, 1), (17, 5, 40)]:
        x, w, g = torch.randn(b, d), torch.randn(n, d), torch.randn(b, n)
        xi = torch.randint(-2, 3, (b, d)).float()
        wi = torch.randint(-2, 3, (n, d)).float()
        for xx, ww in ((x, w), (xi, wi)):
            y, am = T.linf_forward(xx, ww, blocks=(8, 8))
            yr, amr = R.linf_dist_forward(xx, ww)
            if not (torch.equal(y, yr) and torch.equal(am, amr)):
                fails.append(("inf", b, n, d))
            gx, gw = T.linf_backward(g, xx, ww, am, True, True)
            rx, rw = R.linf_dist_backward(g, xx, ww, amr)
            if not (torch.allclose(gx, rx, atol=1e-6) and torch.allclose(gw, rw, atol=1e-6)):
                fails.append(("inf-grad", b, n, d))
        for p in (1.0, 2.0, 8.0, 37.5, 1000.0, 3.0):
            y = T.lp_forward(x, w, p, blocks=(8, 8))
            yr = R.lp_dist_forward(x.double(), w.double(), p)
            gx, gw = T.lp_backward(g, x, w, y, p, True, True, blocks=(8, 16))
            rx, rw = R.lp_dist_backward(g.double(), x.double(), w.double(), yr, p)
            tol = max(2e-6, 3e-7 * p)
            if rel(y, yr) > 2e-6 or rel(gx, rx) > tol or rel(gw, rw) > tol:
                fails.append((p, b, n, d, rel(y, yr), rel(gx, rx), rel(gw, rw)))
    # bfloat16 inputs: fp32 arithmetic, so p = inf equals the reference on the upcast inputs
    xb, wb = torch.randn(6, 30).bfloat16(), torch.randn(7, 30).bfloat16()
    y, am = T.linf_forward(xb, wb, blocks=(8, 8))
    yr, amr = R.linf_dist_forward(xb.float(), wb.float())
    if not (torch.equal(y, yr) and torch.equal(am, amr)):
        fails.append("bf16")
    print("FAILS", fails)
    """
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed (extra: lipcert[gpu])")
def test_triton_kernels_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FAILS []" in res.stdout, res.stdout[-3000:]


# ------------------------------------------------------------------ real GPU
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not HAVE_TRITON, reason="needs CUDA and triton")


@gpu
@needs_cuda
@pytest.mark.parametrize("seed", range(3))
def test_triton_matches_reference_on_gpu(seed):
    assert K.select_backend(torch.empty(0, device="cuda")).name == "triton"
    x, w, g = random_case(seed, torch.float32, contiguous=seed % 2 == 0)
    x, w, g = x.cuda(), w.cuda(), g.cuda()
    for p in PS + EXTRA_PS:
        (y, gx, gw), (yr, gxr, gwr) = run_both("triton", x, w, p, g)
        if math.isinf(p):
            yi, am = K.linf_dist_argmax(x, w)
            yri, amr = reference.linf_dist_forward(x, w)
            assert torch.equal(yi, yri) and torch.equal(am, amr)
        assert ((y.double() - yr).abs() / yr.abs().clamp_min(1e-30)).max().item() < 2e-6, p
        assert rel_to_max(gx, gxr) < grad_tol(torch.float32, p), p
        assert rel_to_max(gw, gwr) < grad_tol(torch.float32, p), p


@gpu
@needs_cuda
def test_triton_ties_and_compile_on_gpu():
    x = torch.randint(-2, 3, (70, 300), device="cuda").float()
    w = torch.randint(-2, 3, (130, 300), device="cuda").float()
    y, am = K.linf_dist_argmax(x, w)
    yr, amr = reference.linf_dist_forward(x, w)
    assert torch.equal(y, yr) and torch.equal(am, amr)
    from lipcert.nn.linf import LinfDistLinear

    model = torch.nn.Sequential(LinfDistLinear(300, 64), LinfDistLinear(64, 10, bias=True)).cuda()
    out = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(out, model(x))
