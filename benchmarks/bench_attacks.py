"""lipcert's attacks against AutoAttack on a trained checkpoint (results: BENCHMARKS.md, "Attacks").

For each eps it runs, on the first --n samples of a dataset split:

* ``certified``     -- the model's certificate (a lower bound on robust accuracy),
* ``lipcert PGD``   -- PGD alone as in the ``pgd`` attack spec (--pgd-steps),
* ``lipcert strong`` -- the default empirical column: PGD, then APGD-CE and APGD-T on the survivors,
  certified samples with the short audit (``lipcert.attacks.run_attacks`` with the default spec and
  the certificate, as the evaluation runs it; or --apgd-steps / --apgd-targets / --audit-steps),
* ``AutoAttack``    -- the standard version (APGD-CE, APGD-T, FAB-T, Square) of the optional
  ``pyautoattack`` package (``pip install pyautoattack``) or ``torchattacks`` (--aa),
* ``union``         -- robust to both lipcert strong and AutoAttack (the best upper bound known),

and prints robust accuracy, time and the samples each side broke that the other did not. A
certified sample broken by any attack would be a soundness bug and is reported.

Example (minutes on 2 CPU cores)::

    python benchmarks/bench_attacks.py runs/mnist5k-linf/model.pt --eps 0.1 0.3 --n 200
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from lipcert import checkpoint, data  # noqa: E402
from lipcert.attacks import DEFAULT_SPEC, run_attacks  # noqa: E402
from lipcert.certify import certify  # noqa: E402


def autoattack(model, x, y, eps: float, norm: str, which: str, batch_size: int, seed: int) -> torch.Tensor:
    """Robust mask under the standard AutoAttack of package ``which``."""
    aa_norm = {"linf": "Linf", "l2": "L2"}[norm]
    if which == "pyautoattack":
        from pyautoattack import AutoAttack

        adv = AutoAttack(model, eps=eps, norm=aa_norm, version="standard", seed=seed).run_standard_evaluation(
            x, y, batch_size=batch_size)
        adv = adv[0] if isinstance(adv, tuple) else adv  # 0.2.0 returns (x_adv, predictions)
    else:
        import torchattacks

        n_classes = int(model(x[:1]).shape[1])
        adv = torchattacks.AutoAttack(model, norm=aa_norm, eps=eps, version="standard", n_classes=n_classes, seed=seed)(x, y)
    dist = (adv - x).flatten(1)
    dist = dist.abs().amax(1) if norm == "linf" else dist.norm(dim=1)
    if bool((dist > eps * (1 + 1e-5) + 1e-6).any()) or bool((adv < 0).any() or (adv > 1).any()):
        raise RuntimeError("AutoAttack returned points outside the eps-ball or [0, 1]")
    with torch.no_grad():
        return torch.cat([model(adv[i : i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)]) == y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="model.pt of a run")
    ap.add_argument("--eps", type=float, nargs="+", required=True, help="radii in raw [0, 1] input units")
    ap.add_argument("--n", type=int, default=200, help="number of test samples (default 200)")
    ap.add_argument("--pick", default="spread", choices=["spread", "first"],
                    help="which samples: evenly spaced over the split (default) or the first N")
    ap.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--pgd-steps", type=int, default=DEFAULT_SPEC["steps"], help="PGD steps (default: the default spec's)")
    ap.add_argument("--apgd-steps", type=int, help="APGD steps (default: the default spec's)")
    ap.add_argument("--apgd-targets", type=int, help="APGD-T target classes (default: the default spec's)")
    ap.add_argument("--apgd-restarts", type=int, help="APGD restarts (default: the default spec's)")
    ap.add_argument("--audit-steps", type=int, help="APGD steps on certified samples (default: the default spec's; -1: full)")
    ap.add_argument("--aa", default="pyautoattack", choices=["pyautoattack", "torchattacks", "none"],
                    help="AutoAttack implementation (default pyautoattack, the authors' code on PyPI)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    payload = checkpoint.read(args.checkpoint)
    name = args.dataset or ((payload.get("config") or {}).get("data") or {}).get("name")
    model = checkpoint.load_model(args.checkpoint, map_location="cpu")
    model.eval()
    x, y = data.load(name, args.split)
    idx = torch.arange(len(y))
    if args.pick == "spread" and args.n < len(y):
        idx = torch.linspace(0, len(y) - 1, args.n).round().long()
    x, y = x[idx[: args.n]], y[idx[: args.n]].long()
    cert = certify(model, x, y, eps=list(args.eps))
    norm = cert.norm
    spec = dict(DEFAULT_SPEC, steps=args.pgd_steps)
    for key in ("apgd_steps", "apgd_targets", "apgd_restarts", "audit_steps"):
        if getattr(args, key) is not None:
            spec[key] = None if getattr(args, key) == -1 else getattr(args, key)
    print(f"# {args.checkpoint} on {name} {args.split}, {len(y)} samples ({args.pick}), {norm}, {datetime.date.today()}, {cpu_model()}, "
          f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')})")
    print(f"# lipcert strong spec: {spec}; clean accuracy {cert.clean_accuracy():.4f}")
    rows = []
    for eps in args.eps:
        certified = cert.certified(eps)
        rows.append((eps, "certified (lower bound)", certified.double().mean().item(), 0.0, ""))
        t0 = time.perf_counter()
        pgd_only = run_attacks(model, x, y, eps, norm, {"name": "pgd", "steps": args.pgd_steps, "seed": args.seed},
                               args.batch_size).robust
        rows.append((eps, f"lipcert PGD ({args.pgd_steps} steps)", pgd_only.double().mean().item(), time.perf_counter() - t0, ""))
        t0 = time.perf_counter()
        strong = run_attacks(model, x, y, eps, norm, dict(spec, seed=args.seed), args.batch_size,
                             progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True), certified=certified).robust
        rows.append((eps, "lipcert strong (default)", strong.double().mean().item(), time.perf_counter() - t0, ""))
        worst = strong
        if args.aa != "none":
            t0 = time.perf_counter()
            aa = autoattack(model, x, y, eps, norm, args.aa, args.batch_size, args.seed).cpu()
            rows.append((eps, f"AutoAttack standard ({args.aa})", aa.double().mean().item(), time.perf_counter() - t0,
                         f"broke {int((strong & ~aa).sum())} lipcert left; lipcert broke {int((aa & ~strong).sum())} it left"))
            worst = strong & aa
            rows.append((eps, "union (robust to both)", worst.double().mean().item(), 0.0, ""))
        for row in rows[-(5 if args.aa != "none" else 3):]:
            print(f"  row: {row}", file=sys.stderr, flush=True)
        bad = int((certified & ~worst).sum())
        if bad:
            print(f"SOUNDNESS VIOLATION: {bad} certified sample(s) broken at eps {eps}", file=sys.stderr)
    print("\n| eps | attack | robust accuracy (%) | time (s) | notes |\n|---:|---|---:|---:|---|")
    for eps, what, acc, secs, note in rows:
        print(f"| {eps:g} | {what} | {100 * acc:.1f} | {secs:.1f} | {note} |")


if __name__ == "__main__":
    main()
