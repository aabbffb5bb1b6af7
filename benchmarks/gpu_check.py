"""One GPU check of lipcert: GPU tests, Triton kernels vs torch.cdist, the CIFAR-10
6 x 5120 training iteration, one epoch of ``cifar10-linf-boost-8``; one table at the end.

Run it through ``benchmarks/gpu_check.sh`` (which installs ``.[gpu,test]`` first) on a machine with
one CUDA GPU and a CUDA build of torch already installed. Steps, each a subprocess with its own
timeout (the whole run stays within ``--budget`` seconds, 8 minutes by default):

1. ``pytest -m gpu`` -- the GPU-marked tests (Triton kernels against the float64 reference);
2. ``bench_linf.py`` at (batch 512, in 3072, out 5120), p = inf / 8 / 20.5, fwd and fwd+bwd,
   lipcert's dispatch (``triton`` on CUDA) against ``torch.cdist``;
3. ``bench_linf.py --skip-kernels --train``: one training iteration (Adam, cross-entropy) of the
   CIFAR-10 6 x 5120 l-inf-dist MLP at batch 512 for p = inf, 8 and 20.5 (a general p), next to
   the authors' 80 / 113 / 187 ms (p = inf / 8 / general p) on an RTX 3090;
4. ``lipcert train --preset cifar10-linf-boost-8`` for one epoch on random CIFAR-shaped data
   written in the official pickle layout (no dataset needed; timing only, accuracy meaningless),
   next to the authors' ~17.6 s per epoch at p = 8 (the preset's first phase) on an RTX 3090.

The authors' times are those of their public l-inf-dist net v2 code (its README, "Speed").

``--device cpu --tiny`` runs every step at toy sizes in seconds (what the test suite exercises);
``--dry-run`` prints the commands and timeouts without running them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_linf.py"
PS = ["inf", "8", "20.5"]
#: authors' training iteration of the CIFAR-10 6 x 5120 net at batch 512 on an RTX 3090
#: (l-inf-dist net v2 code; "20.5" stands for their general-p figure)
AUTHORS_MS = {"inf": 80.0, "8": 113.0, "20.5": 187.0}
AUTHORS_EPOCH_S = 17.6  # one CIFAR-10 epoch at p = 8, same source
STEPS = ("tests", "kernels", "train", "epoch")
#: per-step timeouts (s) on a GPU; together 8 minutes with the install of gpu_check.sh
TIMEOUTS = {"tests": 150, "kernels": 120, "train": 90, "epoch": 120}


@dataclass
class Row:
    """One line of the final table."""

    step: str
    what: str
    value: str
    reference: str = ""
    status: str = "ok"
    seconds: float | None = None


@dataclass
class Plan:
    """The commands of one run (see :func:`plan`)."""

    commands: dict[str, list[str]] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to run (cpu: only with --tiny, to test this script)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes everywhere (seconds on a CPU): checks the script, measures nothing")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and their timeouts, run nothing")
    ap.add_argument("--skip", nargs="*", default=[], choices=STEPS, help="steps to leave out")
    ap.add_argument("--budget", type=float, default=480.0, help="wall-clock seconds for all steps together (default 480 = 8 min)")
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per kernel / training measurement (median reported)")
    ap.add_argument("--train-samples", type=int, default=50000, help="training images of the synthetic CIFAR epoch (default: CIFAR-10's 50,000)")
    ap.add_argument("--test-samples", type=int, default=1000, help="test images of the synthetic CIFAR run (certified once at the end)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON files and the training run (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.device == "cpu" and not args.tiny and not args.dry_run:
        ap.error("--device cpu runs only with --tiny (the full sizes are GPU work: minutes per step on a CPU)")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


def plan(args: argparse.Namespace, out: Path) -> Plan:
    """The subprocess command of every step that is not skipped."""
    py = sys.executable
    tiny = args.tiny
    shape = "8,24,40" if tiny else "512,3072,5120"
    reps = "1" if tiny else str(args.repeats)
    pl = Plan()
    if "tests" not in args.skip:
        target = ["tests/nn/test_kernels.py"] if tiny else []  # tiny: one file (collection of all tests costs ~10 s)
        pl.commands["tests"] = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *target]
    if "kernels" not in args.skip:
        pl.commands["kernels"] = [py, str(BENCH), "--device", args.device, "--shapes", shape, "--p", *PS,
                                  "--methods", "ours", "cdist", "--modes", "fwd", "fwd+bwd", "--repeats", reps,
                                  "--no-train", "--json", str(out / "kernels.json")]
    if "train" not in args.skip:
        width, batch = ("16", "8") if tiny else ("5120", "512")
        pl.commands["train"] = [py, str(BENCH), "--device", args.device, "--skip-kernels", "--train", "--train-p", *PS,
                                "--train-width", width, "--train-batch", batch, "--repeats", reps,
                                "--json", str(out / "train.json")]
    if "epoch" not in args.skip:
        sets = ["train.epochs=1", "eval.attack=null", "train.eval_every=0"]
        if tiny:
            sets += ["model.width=16", "train.batch_size=16"]
        pl.commands["epoch"] = [py, "-m", "lipcert", "train", "--preset", "cifar10-linf-boost-8", "--data-dir", str(out / "cifar"),
                                "--out", str(out / "epoch-run"), "--device", args.device, "--no-progress",
                                *[a for kv in sets for a in ("--set", kv)]]
    scale = 0.5 if tiny else 1.0
    pl.timeouts = {k: int(TIMEOUTS[k] * scale) for k in pl.commands}
    return pl


def write_synthetic_cifar(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random uint8 images and labels in the official CIFAR-10 'python version' layout
    (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``); returns the data directory."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(sizes, 1):
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, size=n).tolist()}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"data": rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, size=n_test).tolist()}
    (d / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    return folder


def run_step(cmd: list[str], timeout: float) -> tuple[str, float, str]:
    """(status, seconds, output tail) of one subprocess; status 'ok', 'failed (rc N)' or 'timeout'."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "timeout", time.perf_counter() - t0, out[-2000:]
    status = "ok" if res.returncode == 0 else f"failed (rc {res.returncode})"
    return status, time.perf_counter() - t0, (res.stdout + res.stderr)[-2000:]


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} ms" if v >= 1 else f"{v:.3f} ms"


def kernel_rows(data: dict) -> list[Row]:
    """One row per (p, mode): ours in ms, and the speed-up over torch.cdist."""
    by = {(r["p"], r["mode"], r["method"]): r for r in data.get("rows", [])}
    rows = []
    for (p, mode, method), r in by.items():
        if method != "ours":
            continue
        cd = by.get((p, mode, "cdist"))
        ref = "-"
        if cd is not None and cd.get("ms"):
            ref = f"cdist {_ms(cd['ms'])}" + (f" ({cd['ms'] / r['ms']:.1f}x)" if r.get("ms") else "")
        elif cd is not None:
            ref = f"cdist: {cd.get('note', '')}"
        status = "ok" if r.get("ms") is not None and "FAILED" not in r.get("note", "") else (r.get("note") or "no time")
        rows.append(Row("kernels", f"{r['shape']} p={p} {mode}", _ms(r.get("ms")), ref, status))
    return rows


def train_rows(data: dict, tiny: bool) -> list[Row]:
    rows = []
    for t in data.get("train", []):
        ref = f"{AUTHORS_MS[t['p']]:.0f} ms RTX 3090" if t["p"] in AUTHORS_MS and not tiny else "-"
        rows.append(Row("train", f"iteration 6x{'16' if tiny else '5120'} batch {t['batch']} p={t['p']}", _ms(t["ms"]), ref))
    return rows


def epoch_rows(run: Path, seconds: float | None, n_train: int) -> list[Row]:
    res = json.loads((run / "results.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = res.get("train_seconds")
    value = f"{train_s:.1f} s train" if isinstance(train_s, (int, float)) else "done"
    ref = f"~{AUTHORS_EPOCH_S} s RTX 3090 (50k images, p = 8)"
    what = f"cifar10-linf-boost-8, 1 epoch of {n_train} synthetic images ({len(metrics)} logged), certify {res.get('n')}"
    return [Row("epoch", what, value, ref, "ok", seconds)]


def format_table(rows: list[Row]) -> str:
    """The final Markdown table."""
    lines = ["| step | what | value | reference | status | s |", "|---|---|---:|---|---|---:|"]
    for r in rows:
        sec = "" if r.seconds is None else f"{r.seconds:.0f}"
        lines.append(f"| {r.step} | {r.what} | {r.value} | {r.reference} | {r.status} | {sec} |")
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    return (f"# gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: device {dev}, torch {torch.__version__}"
            f" (cuda {torch.version.cuda}), {'tiny sizes' if args.tiny else 'full sizes'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="lipcert-gpu-check-")
        out = Path(tmp.name)
    else:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
    pl = plan(args, out)
    if args.dry_run:
        for name, cmd in pl.commands.items():
            print(f"[{name}] timeout {pl.timeouts[name]} s: {' '.join(cmd)}")
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: torch sees no CUDA device (torch %s, cuda %s). Install a CUDA build of torch first; "
                  "use --device cpu --tiny to test this script on a CPU." % (torch.__version__, torch.version.cuda), file=sys.stderr)
            return 2
    print(header(args), flush=True)
    start = time.perf_counter()
    rows: list[Row] = []
    failed = False
    for name, cmd in pl.commands.items():
        left = args.budget - (time.perf_counter() - start)
        if left < 5:
            rows.append(Row(name, "-", "-", "", "skipped: --budget used up"))
            failed = True
            continue
        if name == "epoch":
            write_synthetic_cifar(out / "cifar", 64 if args.tiny else args.train_samples, 32 if args.tiny else args.test_samples)
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        status, sec, tail = run_step(cmd, min(pl.timeouts[name], left))
        print(f"[{name}] {status} in {sec:.0f} s", flush=True)
        if status != "ok":
            failed = True
            print(tail, flush=True)
            rows.append(Row(name, "-", "-", "", status, sec))
            continue
        try:
            if name == "tests":
                summary = [ln for ln in tail.splitlines() if " passed" in ln or " skipped" in ln or " deselected" in ln]
                rows.append(Row(name, "pytest -m gpu", summary[-1].strip("= ") if summary else "ok", "", status, sec))
            elif name == "kernels":
                kr = kernel_rows(json.loads((out / "kernels.json").read_text()))
                failed |= any(r.status != "ok" for r in kr)
                rows += kr
                rows[-1].seconds = sec
            elif name == "train":
                rows += train_rows(json.loads((out / "train.json").read_text()), args.tiny)
                rows[-1].seconds = sec
            elif name == "epoch":
                rows += epoch_rows(out / "epoch-run", sec, 64 if args.tiny else args.train_samples)
        except (OSError, KeyError, ValueError, IndexError) as exc:
            failed = True
            rows.append(Row(name, "reading the results", "-", "", f"failed: {type(exc).__name__}: {exc}", sec))
    print()
    print(header(args))
    print(f"# total {time.perf_counter() - start:.0f} s (budget {args.budget:.0f} s); reference: authors' code on an RTX 3090")
    print(format_table(rows), flush=True)
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
