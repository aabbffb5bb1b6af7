"""``lipcert train --preset NAME``: train, then certify and attack the test split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argtypes import DATA_HELP, data_spec
from .models_check import add_integrity_option
from .options_check import warn_ignored_data_dir


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a preset", description=__doc__)
    p.add_argument("--preset", required=True, help="preset name (see `lipcert presets`) or a YAML file")
    p.add_argument("--out", help="run directory (default: runs/PRESET)")
    p.add_argument("--data", type=data_spec, metavar="KIND:PATH", help=DATA_HELP + " (replaces the recipe's data)")
    p.add_argument("--data-dir", help="directory holding the dataset files (not needed for embedded datasets)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 --set model.width=512 (repeatable)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (JSON lines are still printed)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S",
                   help="train one run per seed into OUT/seed-S (independent ensemble members; then `lipcert ensemble`)")
    add_integrity_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import apply_overrides, load_preset

    cfg = load_preset(args.preset)
    cfg = apply_overrides(cfg, list(args.overrides))
    if args.data:
        name, path = args.data
        if name != cfg.data.name or path != cfg.data.data_dir:
            cfg.data.classes = None  # other data: its own classes
        cfg.data.name, cfg.data.data_dir = name, path
    warn_ignored_data_dir(cfg.data.name, args.data_dir)
    if args.data_dir:  # set directly: as an override it went through YAML ("2024" -> int)
        cfg.data.data_dir = args.data_dir
    if (cfg.preset or "").startswith("custom-") and not args.data:
        print(f"lipcert train: recipe {cfg.preset} is for your own data; without --data it trains on its placeholder "
              f"{cfg.data.name!r}. Pass --data imagefolder:PATH or --data arrays:FILE", file=sys.stderr)
    out = Path(args.out) if args.out else Path("runs") / (cfg.preset or "run")
    if args.seeds:
        if len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds must be distinct, got {args.seeds}")
        started = [s for s in args.seeds if (out / f"seed-{s}" / "last.pt").is_file()]
        for seed in args.seeds:
            run_cfg = apply_overrides(cfg, [f"train.seed={seed}"])
            run_out = out / f"seed-{seed}"
            print(f"lipcert train: preset {cfg.preset}, seed {seed} -> {run_out}")
            # --resume continues the seeds that have a checkpoint and starts those an interruption
            # never reached (all of them missing is still an error: probably the wrong --out)
            resume = args.resume and (seed in started or not started)
            if args.resume and not resume:
                print(f"lipcert train: seed {seed} has no last.pt yet; starting it")
            _train(run_cfg, run_out, args, resume)
        members = " ".join(str(out / f"seed-{s}" / "model.pt") for s in args.seeds)
        print(f"ensemble: lipcert ensemble {members} --eps {' '.join(map(str, cfg.eval.eps))}")
        return 0
    print(f"lipcert train: preset {cfg.preset} -> {out}")
    _train(cfg, out, args, args.resume)
    print(f"results: {out / 'results.json'}   report: lipcert report {out}")
    return 0


def _train(cfg, out: Path, args: argparse.Namespace, resume: bool) -> None:
    """Train one run; on Ctrl-C say what was kept and how to continue."""
    from ..runlock import refusal, running
    from ..train import train

    holder = running(out)  # refuse before the data is loaded (the lock itself is taken in Trainer.fit)
    if holder is not None:
        raise refusal(out, holder)
    if not out.is_dir():
        try:  # before the data is loaded and the model built
            out.mkdir(parents=True, exist_ok=True)  # several torchrun ranks may race here
        except OSError as err:
            raise ValueError(f"cannot create the run directory {out}: {err.strerror}; choose another --out") from None
    try:
        train(cfg, out, device=args.device, resume=resume, progress=not args.no_progress,
              verify=not args.ignore_corruption)
    except KeyboardInterrupt:
        if (out / "last.pt").is_file():
            print(f"lipcert train: interrupted; the last finished epoch is in {out / 'last.pt'}. Continue with the "
                  "same command plus --resume", file=sys.stderr)
        else:
            print(f"lipcert train: interrupted before the first epoch finished; nothing to resume in {out}",
                  file=sys.stderr)
        raise
