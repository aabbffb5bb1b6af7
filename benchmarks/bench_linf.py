"""Benchmark of the l_p-distance kernels against torch baselines (issue 3; results: BENCHMARKS.md).

For each shape (B, D, N) and p it times, side by side in one run:

* ``ours``      -- lipcert's dispatch (``cpu`` native kernels on CPU, ``triton`` on CUDA),
* ``reference`` -- lipcert's plain-torch reference (chunked broadcast),
* ``cdist``     -- ``torch.cdist(x, w, p)``,
* ``compiled``  -- ``torch.compile`` of the broadcast expression (stable formula for finite p);
  its autograd backward materialises B*N*D, so fwd+bwd is skipped when that exceeds --max-mem-gb,

forward alone and forward+backward, and prints ms, G element-ops/s (one element-op = one
(b, n, d) triple, counted once per forward or forward+backward) and the fraction of the
machine's measured peak (an in-cache max|x - w| loop of the native kernel, see
``cpu.peak_element_ops``). Before timing, every method's values (and gradients for fwd+bwd)
are checked against the float64 reference on the first --check-rows rows. Methods whose
estimated time (from a run on B/8 rows) exceeds --budget seconds are skipped with a note
(``ours`` is always timed).
On CUDA it also times one training iteration of the CIFAR-10 6 x 5120 l-inf-dist MLP at batch
512 (Zhang22 §5.1) for p = inf and p = 8 (``--train``; always on when CUDA is present; ``--train-p``
picks other exponents, ``--skip-kernels`` times only the training iteration, ``--no-train`` only the kernels).

Example (a few minutes on 2 CPU cores)::

    python benchmarks/bench_linf.py --shapes 512,784,1024 --p inf 8 37.5 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Compile inductor kernels in-process: its default pool of worker processes would compete with
# the timed kernels for the (here: 2) cores while it starts up.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py: the script folder is on sys.path)

from lipcert.nn import kernels as K  # noqa: E402
from lipcert.nn.kernels import reference  # noqa: E402

SHAPES = [(512, 784, 1024), (512, 5120, 5120), (128, 3072, 5120)]
METHODS = ["ours", "reference", "cdist", "compiled"]


@dataclass
class Row:
    shape: str
    p: str
    method: str
    mode: str
    ms: float | None
    gops: float | None
    frac_peak: float | None
    extra_mb: float | None
    note: str = ""


# ------------------------------------------------------------------ machine facts
def measure_peak(device: torch.device) -> tuple[float | None, str]:
    """Element-ops/s the machine can do on the p = inf inner loop, and what it is."""
    if device.type == "cpu":
        from lipcert.nn.kernels import cpu

        if not cpu.available():
            return None, "native kernels unavailable"
        best = max(cpu.peak_element_ops(reps=40000) for _ in range(5))
        return best, "in-cache max|x-w| loop of the native kernel, all threads"
    props = torch.cuda.get_device_properties(device)
    clock_hz = getattr(props, "clock_rate", 0) * 1e3 or 1.98e9  # kHz -> Hz (H100 SXM boost if unknown)
    lanes = props.multi_processor_count * 128
    return lanes * clock_hz, f"FP32 lane-ops/s ({props.multi_processor_count} SMs x 128 x {clock_hz / 1e9:.2f} GHz); an element-op needs >= 2"


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or the process's VmHWM on Linux CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1]) / 1024.0
        raise KeyError(key)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self.base = self._status("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            self.mb = self._status("VmHWM") - self.base
        return False


# ------------------------------------------------------------------ methods
def _configure_dynamo() -> None:
    # One compiled function per (shape, p, mode): lift dynamo's recompile limit and make hitting
    # it an error, so a baseline can never silently fall back to eager (which would materialise
    # B*N*D).
    cfg = torch._dynamo.config
    for name, value in (("recompile_limit", 256), ("cache_size_limit", 256), ("fail_on_recompile_limit_hit", True)):
        if hasattr(cfg, name):
            setattr(cfg, name, value)


def _compiled_fn(p: float):
    if math.isinf(p):
        def f(x, w):
            return (x[:, None, :] - w[None, :, :]).abs().amax(dim=-1)
    else:
        def f(x, w):
            d = (x[:, None, :] - w[None, :, :]).abs()
            m = d.amax(dim=-1, keepdim=True)
            safe = torch.where(m > 0, m, torch.ones_like(m))
            return m[..., 0] * (d / safe).pow(p).sum(-1).pow(1.0 / p)
    return torch.compile(f, dynamic=False)


def make_method(name: str, p: float):
    if name == "ours":
        return lambda x, w: K.lp_dist(x, w, p)
    if name == "reference":
        return lambda x, w: reference.lp_dist(x, w, p)
    if name == "cdist":
        return lambda x, w: torch.cdist(x, w, p=p)
    if name == "compiled":
        return _compiled_fn(p)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of all threads)


def run_once(fn, x, w, g, backward: bool, device) -> float:
    if backward:
        x.grad = w.grad = None
    sync(device)
    t0 = CLOCK()
    if backward:
        y = fn(x, w)
        y.backward(g)
    else:
        with torch.no_grad():
            fn(x, w)
    sync(device)
    return CLOCK() - t0


def check(fn, x, w, g, p: float, backward: bool, rows: int) -> str:
    """Compare fn with the float64 reference on the first ``rows`` rows; '' if OK, else a note."""
    xs = x[:rows].detach().clone().requires_grad_(backward)
    ws = w.detach().clone().requires_grad_(backward)
    gs = g[:rows]
    if backward:
        y = fn(xs, ws)
        y.backward(gs)
    else:
        with torch.no_grad():
            y = fn(xs, ws)
    xr = xs.detach().double().requires_grad_(backward)
    wr = ws.detach().double().requires_grad_(backward)
    yr = reference.lp_dist(xr, wr, p)
    if backward:
        yr.backward(gs.double())
    yerr = ((y.detach().double() - yr.detach()).abs() / yr.detach().abs().clamp_min(1e-30)).max().item()
    lowp = x.dtype in (torch.bfloat16, torch.float16)
    ytol = 1e-2 if lowp else 1e-5
    if not yerr <= ytol:
        return f"CHECK FAILED: y rel err {yerr:.1e}"
    if backward:
        gtol = (1e-1 if lowp else 1e-5) * max(1.0, p if math.isfinite(p) else 1.0)
        for name, a, b in (("grad_x", xs.grad, xr.grad), ("grad_w", ws.grad, wr.grad)):
            err = (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
            if not err <= gtol:
                return f"CHECK FAILED: {name} err {err:.1e}"
    return ""


def bench_one(method: str, shape, p: float, backward: bool, args, device, peak, tensors) -> Row:
    b, d, n = shape
    x, w, g = tensors
    mode = "fwd+bwd" if backward else "fwd"
    row = Row(f"{b}x{d}x{n}", "inf" if math.isinf(p) else f"{p:g}", method, mode, None, None, None, None)
    if method == "compiled" and backward and b * n * d * x.element_size() > args.max_mem_gb * 2**30:
        row.note = f"skipped: autograd backward materialises B*N*D = {b * n * d * x.element_size() / 2**30:.0f} GiB"
        return row
    if method == "ours" and device.type == "cpu" and K.select_backend(x).name != "cpu":
        row.note = "native backend unavailable"
        return row
    fn = make_method(method, p)
    try:
        note = check(fn, x, w, g, p, backward, min(args.check_rows, b))
    except Exception as exc:  # noqa: BLE001 - report and continue
        row.note = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        return row
    if note:
        row.note = note
        return row
    if method != "ours":  # estimate from some rows before committing to the full shape
        # (compiled: the rows of the check, whose graph is already compiled)
        sub = max(1, min(b, args.check_rows if method == "compiled" else max(args.check_rows, b // 8)))
        xs = x[:sub].detach().clone().requires_grad_(backward)
        t = run_once(fn, xs, w, g[:sub], backward, device)
        est = t * b / sub
        if est > args.budget:
            row.note = f"skipped: est. {est:.0f} s > --budget {args.budget:g} s"
            return row
    # The first full run is the warm-up; a method slower than 2 s a run (the slow baselines) is
    # timed by that run alone, since their noise does not matter next to the gap to ours.
    times = []
    try:
        with PeakMemory(device) as mem:
            first = run_once(fn, x, w, g, backward, device)
            if first > 2.0:
                times.append(first)
            else:
                for _ in range(args.warmup - 1):
                    run_once(fn, x, w, g, backward, device)
                for _ in range(args.repeats):
                    times.append(run_once(fn, x, w, g, backward, device))
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report and continue
        row.note = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        return row
    t = statistics.median(times)
    row.ms = t * 1e3
    row.gops = b * n * d / t / 1e9
    row.frac_peak = (b * n * d / t) / peak if peak else None
    row.extra_mb = mem.mb
    if len(times) > 1:
        row.note = f"spread {min(times) * 1e3:.3g}-{max(times) * 1e3:.3g} ms"
    return row


# ------------------------------------------------------------------ design check
def two_pass_check(shape, args) -> str:
    """p = 8 forward: the shipped one-pass unscaled sum vs the two-pass (max, scaled sum) variant."""
    import ctypes

    from lipcert.nn.kernels import cpu, native

    b, d, n = shape
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(b, d, generator=gen), torch.randn(n, d, generator=gen)
    y2 = torch.empty(b, n)
    lib = native.load()

    def two_pass():
        lib.lc_lp_fwd8_two_pass_f32(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(w.data_ptr()), b, n, d,
                                    ctypes.c_void_p(y2.data_ptr()), torch.get_num_threads())

    def one_pass():
        return cpu.lp_forward(x, w, 8.0)

    y1 = one_pass()
    two_pass()
    assert torch.allclose(y1, y2, rtol=1e-5), "one- and two-pass p = 8 forward disagree"
    best = {"one-pass": [], "two-pass": []}
    for _ in range(max(3, args.repeats)):
        for name, f in (("one-pass", one_pass), ("two-pass", two_pass)):
            t0 = time.perf_counter()
            f()
            best[name].append(time.perf_counter() - t0)
    m1, m2 = statistics.median(best["one-pass"]) * 1e3, statistics.median(best["two-pass"]) * 1e3
    return f"p=8 forward {b}x{d}x{n}: one-pass unscaled {m1:.1f} ms, two-pass scaled {m2:.1f} ms (median, interleaved)"


# ------------------------------------------------------------------ training iteration
def bench_train(p: float, device, args) -> dict:
    from lipcert.models import build

    torch.manual_seed(0)
    model = build(
        "linf_mlp", in_shape=(3, 32, 32), width=args.train_width, depth=6, p=p,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(args.train_batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.train_batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()

    for _ in range(args.warmup + 1):
        step()
    times = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"p": "inf" if math.isinf(p) else f"{p:g}", "batch": args.train_batch, "ms": statistics.median(times) * 1e3,
            "spread_ms": [min(times) * 1e3, max(times) * 1e3]}


# ------------------------------------------------------------------ main
def parse_shape(s: str) -> tuple[int, int, int]:
    parts = [int(v) for v in s.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must be B,D,N, got {s!r}")
    return parts[0], parts[1], parts[2]



def _pow_peak(device: torch.device) -> float | None:
    """G powers/s of the finite-p term exp2(p log2 a) on one thread (CPU only, in-cache)."""
    if device.type != "cpu":
        return None
    from lipcert.nn.kernels import cpu

    return max(cpu.pow_peak() for _ in range(3)) / 1e9 if cpu.available() else None


# ------------------------------------------------------------------ quick-start training step
def quickstart_step(args: argparse.Namespace, ps: list[float]) -> list[str]:
    """CPU time of one training step of the quick-start net (linf_mlp 5 x 512 on mnist5k, batch
    128, cross-entropy + Adam) at each p; process CPU time, robust to other load on the machine."""
    from lipcert.data import registry as data_registry
    from lipcert.models import registry as models
    from lipcert.nn.linf import set_p

    torch.manual_seed(0)
    x_all, y_all = data_registry.load("mnist5k", "train")
    if args.quickstart_model is not None:  # trained weights: the kept fractions of training
        from lipcert.checkpoint import load_model

        model = load_model(args.quickstart_model)
        model = model[0] if isinstance(model, tuple) else model
        model.train()
    else:
        model = models.build("linf_mlp", width=512, depth=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if args.quickstart_model is None else 1e-5)
    batch = args.quickstart_batch

    def step(i: int) -> None:
        lo = (i * batch) % (x_all.shape[0] - batch)
        xb, yb = x_all[lo : lo + batch].float(), y_all[lo : lo + batch]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(5 if args.quickstart_model is None else 0):  # a few steps at p = 8 so the weights leave the init
        set_p(model, 8.0)
        step(i)
    out = []
    for p in ps:
        set_p(model, p)
        step(0)
        times = []
        for i in range(args.repeats):
            t0 = time.process_time()
            step(i + 1)
            times.append(time.process_time() - t0)
        out.append(f"| quick-start step | {p:g} | {1e3 * statistics.median(times):.1f} ms CPU (median of {args.repeats}) |")
    return out

def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=SHAPES, help="B,D,N (default: 512,784,1024 512,5120,5120 128,3072,5120)")
    ap.add_argument("--p", nargs="+", default=["inf", "8", "37.5"], help="exponents (default: inf 8 37.5)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=12.0, help="skip a method whose estimated time per run exceeds this (s)")
    ap.add_argument("--check-rows", type=int, default=16, help="rows of x checked against the reference before timing")
    ap.add_argument("--max-mem-gb", type=float, default=4.0, help="skip compiled fwd+bwd above this B*N*D size")
    ap.add_argument("--threads", type=int, default=None, help="torch / native threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--train", action="store_true", help="also time the CIFAR-10 6x5120 training iteration (default on CUDA)")
    ap.add_argument("--train-batch", type=int, default=512)
    ap.add_argument("--train-width", type=int, default=5120, help="hidden width of the 6-layer MLP (Zhang22 §5.1: 5120)")
    ap.add_argument("--train-p", nargs="+", default=["inf", "8"], help="exponents of the training iteration (default: inf 8)")
    ap.add_argument("--skip-kernels", action="store_true", help="skip the kernel table (e.g. with --train: only the training iteration)")
    ap.add_argument("--no-train", action="store_true", help="on CUDA: do not time the training iteration (kernels only)")
    ap.add_argument("--json", type=Path, default=None, help="write rows and machine facts here")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall: elapsed time; cpu: process CPU time (sums all threads; with --threads 1 it is robust to other load on a shared machine)")
    ap.add_argument("--quickstart-step", action="store_true", help="CPU: time one quick-start training step (5 x 512 MLP, mnist5k, batch 128) per p (CPU time), then exit")
    ap.add_argument("--quickstart-model", type=Path, default=None, help="with --quickstart-step: start from this model.pt (e.g. runs/mnist5k-linf/model.pt; default: 5 steps at p = 8 from the init)")
    ap.add_argument("--quickstart-batch", type=int, default=128, help="with --quickstart-step: batch size (the mnist5k-linf preset: 64)")
    ap.add_argument("--two-pass-check", action="store_true", help="CPU: time p=8 forward one-pass vs two-pass, then exit")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _configure_dynamo()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    ps = [math.inf if v.lower() == "inf" else float(v) for v in args.p]

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.quickstart_step:
        print(f"# {cpu_model()}, {torch.get_num_threads()} threads, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
        for line in quickstart_step(args, ps):
            print(line, flush=True)
        return []
    if args.two_pass_check:
        for shape in args.shapes:
            print(two_pass_check(shape, args))
        return []
    peak, peak_what = (None, "not measured (--skip-kernels)") if args.skip_kernels else measure_peak(device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    head = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": K.backend_info(torch.empty(0, device=device, dtype=dtype)),
        "peak_gops": peak / 1e9 if peak else None,
        "peak_what": peak_what,
        "pow_gps_1thread": _pow_peak(device),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    for k, v in head.items():
        print(f"# {k}: {v:.1f}" if isinstance(v, float) else f"# {k}: {v}")
    print()
    print("| shape BxDxN | p | mode | method | ms | G el-ops/s | frac. of peak | peak extra MB | note |")
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    rows: list[Row] = []
    for shape in [] if args.skip_kernels else args.shapes:
        b, d, n = shape
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, d, generator=gen).to(device, dtype).requires_grad_(True)
        w = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_(True)
        g = torch.randn(b, n, generator=gen).to(device, dtype)
        for p in ps:
            for mode in args.modes:
                for method in args.methods:
                    r = bench_one(method, shape, p, mode == "fwd+bwd", args, device, peak, (x, w, g))
                    rows.append(r)

                    def f(v, fmt):
                        return "-" if v is None else format(v, fmt)

                    print(f"| {r.shape} | {r.p} | {r.mode} | {r.method} | {f(r.ms, '.1f')} | {f(r.gops, '.2f')} | "
                          f"{f(r.frac_peak, '.3f')} | {f(r.extra_mb, '.0f')} | {r.note} |", flush=True)
    if device.type == "cpu" and peak and not args.skip_kernels:
        # the machine may be shared: a second peak measurement tells how much the load changed
        end_peak, _ = measure_peak(device)
        head["peak_gops_end"] = end_peak / 1e9 if end_peak else None
        print(f"# peak_gops at the end of the run: {head['peak_gops_end']:.1f} (fractions above use the first)")
    train = []
    if (device.type == "cuda" and not args.no_train) or args.train:
        for p in [math.inf if v.lower() == "inf" else float(v) for v in args.train_p]:
            res = bench_train(p, device, args)
            train.append(res)
            print(f"# train iteration CIFAR-10 linf_mlp 6x{args.train_width} batch {res['batch']} p={res['p']}: {res['ms']:.1f} ms "
                  f"(spread {res['spread_ms'][0]:.1f}-{res['spread_ms'][1]:.1f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"head": head, "rows": [asdict(r) for r in rows], "train": train}, indent=1))
    return rows


if __name__ == "__main__":
    main()
