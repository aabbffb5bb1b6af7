"""Forward + backward of max / min / ReLU-theta: torch's ops against ``lipcert.nn.elementwise``.

Why it exists: on the CPU builds of torch this project runs on, ops that make or read ``bool``
tensors are 3-10x slower than float arithmetic, and torch's ``maximum`` / ``minimum`` / ``clamp``
backward passes are made of them (BENCHMARKS.md, "Boolean tensors are slow on CPU").

Example (one thread, a few seconds)::

    OMP_NUM_THREADS=1 python benchmarks/bench_elementwise.py --shape 256 8 28 28
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lipcert.nn import elementwise as ew


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs="+", default=[256, 8, 28, 28], help="batch, then the feature shape")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    shape = tuple(args.shape)
    a = torch.randn(shape, requires_grad=True)
    b = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    th = torch.rand(shape[1:], requires_grad=True)
    zero = torch.zeros_like(th)
    cases = [
        ("maximum(a, b)", lambda: torch.maximum(a, b), lambda: ew.maximum(a, b), (a, b)),
        ("where(a >= b, a, b)", lambda: torch.where(a >= b, a, b), None, (a, b)),
        ("ReLU-theta min(relu(z), theta)", lambda: torch.minimum(torch.relu(a), th), lambda: ew.minimum(torch.relu(a), th), (a, th)),
        ("clamp(z, 0, theta)", lambda: torch.clamp(a, zero, th), None, (a, th)),
    ]
    lines = [f"shape {shape}, {torch.get_num_threads()} thread(s), forward + backward, median of {args.repeats}",
             "| op | torch ms | lipcert.nn.elementwise ms |", "|---|---:|---:|"]
    for name, ref, ours, inputs in cases:
        t_ref = median_ms(lambda: torch.autograd.grad(ref(), inputs, g), args.repeats)
        t_ours = median_ms(lambda: torch.autograd.grad(ours(), inputs, g), args.repeats) if ours else None
        lines.append(f"| {name} | {t_ref:.2f} | {'' if t_ours is None else f'{t_ours:.2f}'} |")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
