"""argparse value types shared by the subcommands: a bad number is a usage error, not a traceback."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def radius(text: str) -> float:
    """A perturbation radius: a float >= 0 or a fraction like ``8/255`` (``inf`` allowed), never NaN."""
    from ..certify.radii import parse_radius

    try:
        value = parse_radius(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a radius must be a number >= 0")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sample counts, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def _audit(text: str) -> int | str:
    if text == "full":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 0 or full") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 0 or full")
    return value


def output_file(text: str) -> str:
    """A file to write results to, checked before any work is done (not after a long certification)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name inside it")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r}: {parent} {what}; create it first or write elsewhere")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: {parent} is not writable; write elsewhere")
    return text


def data_spec(text: str) -> tuple[str, str | None]:
    """``--data``: ``imagefolder:PATH`` / ``arrays:PATH`` (your own data; PATH made absolute, so a run's
    config finds it from any directory) or a built-in dataset name -> (name, path or None)."""
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("imagefolder", "arrays"):
        if not sep or not path.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: give the path, {kind}:PATH")
        p = Path(path).expanduser()
        if not p.exists():
            raise argparse.ArgumentTypeError(f"{text!r}: {p} does not exist")
        return kind, str(p.resolve())
    if sep:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown data kind {kind!r}; use imagefolder:PATH, arrays:PATH or "
                                         "a dataset name")
    return text, None


DATA_HELP = ("your own data: imagefolder:PATH (PATH/<class>/*.png, or PATH/train/<class>/ and PATH/test/<class>/) or "
             "arrays:FILE (.npz / .pt / .safetensors with x, y[, x_test, y_test]); or a dataset name")


def add_evaluation_options(p: argparse.ArgumentParser, trained_on: str) -> None:
    """The options ``certify`` and ``ensemble`` share: radii, PGD, data selection, device and how a
    training-state checkpoint is read. ``trained_on`` names whose dataset is the default."""
    p.add_argument("--eps", type=radius, nargs="+", required=True,
                   help="radii in raw [0, 1] input units, numbers or fractions (0.1 8/255)")
    p.add_argument("--allow-large-eps", action="store_true",
                   help="evaluate radii that contain the whole [0, 1] input box (l-inf eps > 1), which are refused "
                        "as likely pixel units (8 for 8/255)")
    p.add_argument("--attack", nargs="*", metavar="ATTACK",
                   help="also attack at each eps; the empirical column is the worst case over the attacks given: pgd, "
                        "apgd-ce, apgd-dlr, apgd-t, apgd (= apgd-ce apgd-t), strong (= pgd apgd-ce apgd-t), none. "
                        "--attack alone means strong; default none")
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=int, default=1, help="PGD restarts (default 1)")
    p.add_argument("--step-size", type=radius, default=None, help="PGD step size, a number or a fraction (default 2.5 eps / steps)")
    p.add_argument("--apgd-steps", type=int, default=None, help="APGD iterations per run (default 25)")
    p.add_argument("--apgd-targets", type=int, default=None, help="APGD-T target classes (default 3)")
    p.add_argument("--apgd-restarts", type=int, default=None, help="APGD runs from random starts (default 1)")
    p.add_argument("--audit-steps", type=_audit, default=None,
                   help="APGD iterations on samples certified at eps (a soundness audit, one APGD-T target; default 10); "
                        "full: the same APGD settings as the other samples")
    p.add_argument("--dataset", help=f"dataset name (default: the one {trained_on} trained on)")
    p.add_argument("--data", type=data_spec, metavar="KIND:PATH",
                   help=DATA_HELP + f" (default: the data {trained_on} trained on, numbered by its recorded classes)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default test)")
    p.add_argument("--data-dir", help="directory holding the dataset files")
    p.add_argument("--limit", type=positive_int, help="only the first N samples of the split")
    p.add_argument("--batch-size", type=positive_int, default=500, help="samples per batch (default 500)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--p-inf", action="store_true",
                   help="certify a training state saved in the l_p phase (last.pt at finite p) at p = inf")
    p.add_argument("--raw", action="store_true",
                   help="for training-state checkpoints (last.pt) of EMA runs use the raw weights instead of the EMA ones")


def resolve_data(args: argparse.Namespace, cfg_data: dict | None) -> tuple[str, str | None, dict]:
    """(name, data_dir, load options) of the data to evaluate on: ``--data`` / ``--dataset`` /
    ``--data-dir`` over what the checkpoint's config records. Your own data keeps the recorded
    class numbering (``data.classes``) so labels mean what they meant in training."""
    from .. import data

    d = dict(cfg_data or {})
    if getattr(args, "data", None) and args.dataset:
        raise ValueError("give --data or --dataset, not both")
    if getattr(args, "data", None):
        name, path = args.data
        if path is not None:
            d.update(name=name, data_dir=path)
            if not data.custom.is_custom(cfg_data.get("name", "") if cfg_data else ""):
                d.pop("classes", None)
        else:
            d = {"name": name}
    elif args.dataset:
        d = {"name": args.dataset}
    name = d.get("name")
    if not name:
        raise ValueError("the checkpoint does not record its dataset; pass --data KIND:PATH or --dataset NAME")
    data_dir = args.data_dir or d.get("data_dir")
    return name, data_dir, data.config_options(d)


def attack_spec(args: argparse.Namespace) -> dict | None:
    """The attack spec (``lipcert.attacks.suite``) of the ``--attack``, ``--steps``, ... options;
    None for no attack. An unknown attack name is a ValueError naming the valid ones."""
    from ..attacks import attack_names

    if args.attack is None or [a.lower() for a in args.attack] == ["none"]:
        return None
    spec = {"name": args.attack or ["strong"], "steps": args.steps, "restarts": args.restarts, "step_size": args.step_size}
    for key in ("apgd_steps", "apgd_targets", "apgd_restarts", "audit_steps"):
        if getattr(args, key, None) is not None:
            spec[key] = None if getattr(args, key) == "full" else getattr(args, key)
    try:
        attack_names(spec)
    except ValueError as err:
        raise ValueError(f"--attack: {err}") from None
    return spec


def check_radii(eps_list: list[float], norm: str | None, x, allow: bool, log=None) -> None:
    """Refuse (ValueError with a hint) radii that contain the whole [0, 1] input box, unless
    ``allow`` (--allow-large-eps), then only ``log`` a warning."""
    from ..certify.radii import radius_problem

    for eps in eps_list:
        problem = radius_problem(eps, norm, x)
        if problem and not allow:
            raise ValueError(f"--eps {eps:g}: {problem}. Pass --allow-large-eps to evaluate it anyway")
        if problem and log is not None:
            log(f"warning: --eps {eps:g}: {problem}")
