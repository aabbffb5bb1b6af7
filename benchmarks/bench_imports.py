"""Start-up cost of lipcert: CPU time (user + sys) and wall time of a few commands in fresh processes.

CPU time is the robust figure on a shared machine (wall time grows with the load; CPU time much
less); both are the best and median of N runs.

    python benchmarks/bench_imports.py --repeats 7 [--tree DIR]

``--tree`` puts another checkout first on PYTHONPATH (e.g. /work/main for a before/after pair).
Each command runs in a new interpreter, so the numbers include Python's and torch's own start-up.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "import lipcert.data": [sys.executable, "-c", "import lipcert.data"],
    "import lipcert.certify": [sys.executable, "-c", "import lipcert.certify"],
    "lipcert --help": [sys.executable, "-m", "lipcert", "--help"],
    "lipcert certify --help": [sys.executable, "-m", "lipcert", "certify", "--help"],
    "load mnist5k (train)": [sys.executable, "-c", "import lipcert.data as d; d.load('mnist5k', 'train')"],
    "load digits + build + certify 1 batch": [sys.executable, "-c",
        "import lipcert.data as d, lipcert.models as m, lipcert.certify as c; x, y = d.load('digits', 'test'); "
        "c.certify(m.build('linf_mlp', in_shape=[1, 8, 8], num_classes=10, width=64, depth=3, mean=[0.3], std=0.4).eval(), x, y)"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    ap.add_argument("--repeats", type=int, default=5, help="runs per command (default 5)")
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]), help="checkout to import lipcert from")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.tree, "OMP_NUM_THREADS": "1"}
    print(f"tree {args.tree}; {args.repeats} runs each; load average {os.getloadavg()[0]:.1f}")
    print("| command | CPU s best | CPU s median | wall s best | wall s median |\n|---|---:|---:|---:|---:|")
    for name, cmd in COMMANDS.items():
        cpu, wall = [], []
        for _ in range(args.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            # cwd = the tree: `python -c` puts the working directory first on sys.path
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=args.tree)
            wall.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        print(f"| `{name}` | {min(cpu):.2f} | {statistics.median(cpu):.2f} | {min(wall):.2f} | {statistics.median(wall):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
