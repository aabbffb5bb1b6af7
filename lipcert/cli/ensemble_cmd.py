"""``lipcert ensemble CKPT [CKPT ...] --eps E ...``: certify the averaged logits (or the majority vote)
of several models.

An average of 1-Lipschitz nets is 1-Lipschitz, so the ensemble is certified by the margin of its
averaged logits; hybrid (Net + MLP) members contribute their interval bounds (EMAReport §2.4).
``--combine vote``: the members' majority vote (ties: the lowest class index), certified from the
members' own certificates (lipcert.certify.voting). Member and ensemble accuracies (clean,
certified, and attacked with ``--attack``) are shown side by side.
"""

from __future__ import annotations

import argparse
import json

from .argtypes import add_evaluation_options, attack_spec, check_radii, output_file, resolve_data
from .models_check import add_integrity_option, relaxed_model_check
from .options_check import warn_ignored_data_dir, warn_ignored_raw


def add_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="certify an ensemble of checkpoints (averaged logits)", description=__doc__)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model.pt (or last.pt) of each member")
    add_evaluation_options(p, trained_on="the members were")
    p.add_argument("--method", default="auto",
                   help="auto = best (margin and interval bounds over the input box clipped to [0, 1], for members and "
                        "ensemble alike; the larger radius per sample) or margin (the averaged-margin certificate alone)")
    p.add_argument("--combine", choices=("mean", "vote"), default="mean",
                   help="mean = average the logits (default); vote = majority vote, ties to the lowest class index, "
                        "certified soundly from the members' radii")
    p.add_argument("--json", type=output_file, help="write members' and ensemble's results to this file")
    add_integrity_option(p)
    p.set_defaults(run=run)


def _dataset_of(payload: dict) -> tuple[str | None, str | None]:
    cfg = payload.get("config") or {}
    d = cfg.get("data") or {}
    return d.get("name"), d.get("data_dir")


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint, data
    from ..certify import eps_key, evaluate
    from ..models import LinfEnsemble, LinfVotingEnsemble
    from ..train import resolve_device

    device = resolve_device(args.device)
    verify = not args.ignore_corruption
    payloads = [checkpoint.read(c, verify=verify) for c in args.checkpoints]
    names = {_dataset_of(pl)[0] for pl in payloads}
    names.discard(None)
    if args.dataset:
        name = args.dataset
    elif len(names) == 1:
        name = names.pop()
    elif names:
        raise ValueError(f"the checkpoints were trained on different datasets {sorted(names)}; pass --dataset NAME")
    else:
        raise ValueError("the checkpoints do not record their dataset; pass --dataset NAME")
    data_dir = args.data_dir or _dataset_of(payloads[0])[1]
    first_data = (payloads[0].get("config") or {}).get("data") or {}
    options = data.config_options(first_data) if name == first_data.get("name") else {}
    if args.data:
        name, data_dir, options = resolve_data(args, first_data)
    warn_ignored_data_dir(name, args.data_dir)
    for c, pl in zip(args.checkpoints, payloads):
        warn_ignored_raw(args.raw, pl, c)
    members = [checkpoint.load_model(c, map_location=device, use_ema=not args.raw, verify=verify) for c in args.checkpoints]
    for c, m in zip(args.checkpoints, members):
        relaxed_model_check(m, c, args.p_inf)
    attack = attack_spec(args)
    x, y = data.load(name, args.split, data_dir=data_dir, **options)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    check_radii(args.eps, "linf", x, args.allow_large_eps, log=print)
    from ..certify import method_names, methods

    kind = "linf_voting" if args.combine == "vote" else "linf_ensemble"
    allowed = ["auto", *method_names(kind)]

    def method_for(model):
        if args.method not in allowed:
            raise ValueError(f"--method must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {args.method!r}")
        if args.method == "auto" or args.method not in methods(model):  # e.g. hybrids: their own certificate
            return None
        return {"method": args.method}

    rows = []
    for path, model in zip(args.checkpoints, members):
        res, _ = evaluate(model, x, y, args.eps, attack, args.batch_size, log=print, cert_kwargs=method_for(model))
        rows.append({"checkpoint": path, **res})
    ens = (LinfVotingEnsemble if args.combine == "vote" else LinfEnsemble)(members).eval()
    ens_res, _ = evaluate(ens, x, y, args.eps, attack, args.batch_size, log=print, cert_kwargs=method_for(ens))
    results = {"dataset": name, "split": args.split, "n": int(y.numel()), "combine": args.combine, "members": rows,
               "ensemble": ens_res}

    keys = [eps_key(e) for e in args.eps]
    head = f"{'model':<44} {'clean':>7}" + "".join(f" {'cert@' + k:>12}" for k in keys)
    if attack:
        head += "".join(f" {'attack@' + k:>12}" for k in keys)
    print(f"{name} {args.split}, n = {y.numel()}; certificates: members {rows[0]['method']}, ensemble {ens_res['method']}")
    print(head)

    def line(label: str, res: dict) -> str:
        s = f"{label[-44:]:<44} {res['clean_accuracy']:7.4f}" + "".join(f" {res['eps'][k]['certified_accuracy']:12.4f}" for k in keys)
        if attack:
            s += "".join(f" {res['eps'][k]['attack_accuracy']:12.4f}" for k in keys)
        return s

    for r in rows:
        print(line(r["checkpoint"], r))
    how = "majority vote" if args.combine == "vote" else "averaged logits"
    print(line(f"ensemble of {len(members)} ({how})", ens_res))
    best = {k: max(r["eps"][k]["certified_accuracy"] for r in rows) for k in keys}
    print("ensemble - best member (certified): " + ", ".join(f"{k}: {ens_res['eps'][k]['certified_accuracy'] - best[k]:+.4f}" for k in keys))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0
