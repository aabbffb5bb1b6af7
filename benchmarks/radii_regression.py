"""Per-sample l2 radii of shipped presets under every ``--bound``, saved or compared.

A refactor of the l2 bounds must not change a single certificate. This script trains (briefly, the
weights only need to be non-trivial) the l2 presets it checks, certifies a fixed set of test images
with every bound, and either saves the radii (``--save``) or compares them with a saved file
(``--compare``: max relative difference per preset and bound, failing above ``--rtol``).

    python benchmarks/radii_regression.py --models DIR --save ref.pt      # before the change
    python benchmarks/radii_regression.py --models DIR --compare ref.pt   # after it

Models are trained once into DIR (``EPOCHS``) and reused by later calls.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

PRESETS = ("digits-l2-local", "digits-l2-crm", "mnist5k-l2-local", "mnist5k-l2-crm")
BOUNDS = ("best", "global", "local-upper", "local", "naive", "liplt", "liplt-estimate")


#: epochs per preset: long enough that most test images get a radius > 0 (None: the preset's own)
EPOCHS = {"digits-l2-local": None, "digits-l2-crm": None, "mnist5k-l2-local": 8, "mnist5k-l2-crm": 8}


def train(preset: str, out: Path) -> None:
    if (out / "model.pt").exists():
        return
    cmd = [sys.executable, "-m", "lipcert", "train", "--preset", preset, "--out", str(out), "--set", "eval.attack=null"]
    if EPOCHS.get(preset):
        cmd += ["--set", f"train.epochs={EPOCHS[preset]}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def radii(run: Path, n: int) -> dict[str, torch.Tensor]:
    from lipcert.certify import certify
    from lipcert.checkpoint import load_model
    from lipcert import data

    model = load_model(run / "model.pt").eval()
    x, y = data.load(run.name.split("-")[0], "test")
    x, y = x[:n], y[:n]
    eps = [0.5, 1.0, 1.58] if "mnist" in run.name else [0.25, 0.5, 1.0]
    out = {}
    for bound in BOUNDS:
        torch.manual_seed(0)
        out[bound] = certify(model, x, y, norm="l2", bound=bound, eps=eps).radius.detach().to(torch.float64).cpu()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="directory for the trained runs (reused)")
    ap.add_argument("-n", type=int, default=64, help="test images per preset")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", type=Path)
    g.add_argument("--compare", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-12)
    a = ap.parse_args()
    result = {}
    for preset in a.presets:
        run = a.models / preset
        train(preset, run)
        result[preset] = radii(run, a.n)
    if a.save:
        torch.save(result, a.save)
        print(f"saved radii of {len(result)} presets x {len(BOUNDS)} bounds to {a.save}")
        return
    ref = torch.load(a.compare, weights_only=True)
    worst = 0.0
    print("| preset | bound | certified > 0 | max rel diff |\n|---|---|---|---|")
    for preset, per_bound in result.items():
        for bound, r in per_bound.items():
            r0 = ref[preset][bound]
            d = ((r - r0).abs() / r0.abs().clamp_min(1e-300)).where(r0 != 0, (r - r0).abs()).max().item()
            worst = max(worst, d)
            print(f"| {preset} | {bound} | {int((r0 > 0).sum())}/{len(r0)} | {d:.2e} |")
    print(f"worst relative difference {worst:.2e} (tolerance {a.rtol:g})")
    sys.exit(0 if worst <= a.rtol else 1)


if __name__ == "__main__":
    main()
