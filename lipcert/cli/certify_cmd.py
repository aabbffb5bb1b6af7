"""``lipcert certify CHECKPOINT --eps E ... [--attack]``: certified (and attacked) accuracy of a saved model.

``--attack`` alone runs PGD and then APGD-CE and APGD-T on the samples PGD left (``strong``); the
attacked column is the worst case over them, and a certified sample broken by any attack is
reported as a soundness violation. Radii are numbers or fractions (``--eps 2/255 8/255``).

Your own torch model: ``lipcert certify --model-factory mynet.py:make_net --weights net.safetensors
--data imagefolder:PATH --eps 0.5 --norm l2`` (its layers must be ones the l2 bounds support,
``lipcert.certify.plain``). l2 models (``--norm l2``) are certified by margin / Lipschitz factor with the bound chosen by
``--bound``: ``best`` (default; per sample the best *sound* bound), ``global``, ``local-upper``
(sound local bound) or ``local`` (Huang21's power-iteration local bound: an estimate, labelled so).
``naive`` / ``liplt`` / ``liplt-estimate`` / ``liplt-per-class`` certify by min_i (z_y - z_i) / L_yi with pairwise bounds
(Fazlyab23; ``lipcert.certify.pairwise``); ``best`` also takes LipLT into account.
``bcp`` certifies at each ``--eps`` with the BCP ball-and-box bound (Huang21 App. B, the authors'
protocol; on top of ``local-upper``; inputs clipped to [0, 1]): the certified accuracy per eps, and
as radius the largest certified eps (``lipcert.certify.bcp``).
"""

from __future__ import annotations

import argparse
import json
import sys

from .argtypes import add_evaluation_options, attack_spec, check_radii, output_file, resolve_data
from .models_check import add_integrity_option, relaxed_model_check
from .options_check import warn_ignored_data_dir, warn_ignored_raw



#: what a BCP certificate's radii are (printed and written to the results)
BCP_RADIUS = ("certified per eps of --eps by the BCP ball-and-box bound or the Lipschitz radius; a sample's radius is "
              "its Lipschitz radius or the largest eps certified, whichever is larger (inputs in [0, 1] only)")


class _RegistryNames:
    """Names from the certificate registry (:mod:`lipcert.certify.dispatch`), read when argparse
    first checks or lists them: building the parser stays free of torch (``lipcert --help``)."""

    def __init__(self, read) -> None:
        self._read = read

    def _names(self) -> list[str]:
        from .. import certify

        return self._read(certify)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


#: the values of --bound: every l2 bound a registered certifier takes
L2_BOUND_NAMES = _RegistryNames(lambda certify: certify.bound_names())


def _bound_name(text: str) -> str:
    """An l2 bound name, checked against the registry when the option is given (an argparse
    ``choices`` would be read while the parser is built -- Python 3.12+ expands help texts then --
    and load torch for every ``--help``)."""
    if text not in L2_BOUND_NAMES:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(L2_BOUND_NAMES)})")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("certify", help="certify a checkpoint on a dataset split", description=__doc__)
    p.add_argument("checkpoint", nargs="?", help="model.pt or last.pt of a run (or use --model-factory for your own model)")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                   help="your own torch model (l2): a function that builds it, in a module on PYTHONPATH "
                        "(mypkg.nets:make_net) or a file (path/mynet.py:make_net); called with no arguments. Its layers "
                        "must be ones the l2 bounds support (lipcert.certify.plain.SUPPORTED); needs --data or --dataset")
    p.add_argument("--weights", metavar="FILE",
                   help="with --model-factory: the weights, a .safetensors file or a state dict saved with torch.save "
                        "(read with weights_only=True)")
    add_evaluation_options(p, trained_on="the model was")
    p.add_argument("--method", default="auto",
                   help="l-inf certificate: auto = best (the model's best sound certificate, as training's final "
                        "evaluation: margin + interval bounds over the input box clipped to [0, 1] for l-inf-dist nets and "
                        "ensembles, Lipschitz box + backbone intervals for Net+MLP hybrids; the larger radius per sample); "
                        "margin (margin alone), interval (interval alone); for hybrids lipschitz or interval")
    p.add_argument("--norm", choices=["linf", "l2"], help="the norm to certify in (default: the model's; must match it)")
    p.add_argument("--bound", type=_bound_name, metavar="BOUND",
                   help="l2 only: Lipschitz bound behind the radii (`lipcert bounds` lists them; default best = best "
                        "sound bound per sample; checked against the certifier registry)")
    p.add_argument("--l2-form", choices=["pairs", "sqrt2"],
                   help="l2 only: radius min_j (z_y - z_j) / (||w_y - w_j|| L_prefix) (pairs, GloRo's form, default) "
                        "or margin / (sqrt(2) L) (sqrt2, Huang21's formula; never larger)")
    p.add_argument("--json", type=output_file, help="write the results dict to this file")
    p.add_argument("--radii", type=output_file, help="write per-sample radii to this CSV (index,label,prediction,radius)")
    add_integrity_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import resolve_device
    from ..train.distributed import init_distributed, local_device, shutdown

    device = resolve_device(args.device)
    env = init_distributed(device)  # under torchrun the split is shared between the processes
    device = local_device(device, env)
    try:
        return _run(args, device, env)
    finally:
        shutdown(env)


def _run(args: argparse.Namespace, device, env) -> int:
    from .. import checkpoint, data

    if args.model_factory or args.weights:
        return _run_own_model(args, device, env)
    if not args.checkpoint:
        raise ValueError("give a checkpoint (a run's model.pt) or your own model: --model-factory MODULE:FUNCTION "
                         "--weights FILE")
    payload = checkpoint.read(args.checkpoint, verify=not args.ignore_corruption)
    cfg = payload.get("config") or {}
    name, data_dir, data_options = resolve_data(args, cfg.get("data"))
    warn_ignored_data_dir(name, args.data_dir)
    warn_ignored_raw(args.raw, payload, args.checkpoint)
    model = checkpoint.load_model(args.checkpoint, map_location=device, use_ema=not args.raw,
                                  verify=not args.ignore_corruption)
    relaxed_model_check(model, args.checkpoint, args.p_inf)
    from ..certify import bound_names, methods, norm_of

    model_norm = norm_of(getattr(model, "certificate", None))
    if args.norm and model_norm and args.norm != model_norm:
        raise ValueError(f"{args.checkpoint} holds a {model_norm} model ({type(model).__name__}); it cannot be "
                         f"certified in {args.norm}. Use --norm {model_norm}")
    cert_kwargs = {}
    for flag, value in (("--bound", args.bound), ("--l2-form", args.l2_form)):
        if value and model_norm != "l2":
            raise ValueError(f"{flag} is an option of l2 Lipschitz certificates; {type(model).__name__} is certified in "
                             f"{model_norm} by its own certificate. Drop {flag}")
    if args.method != "auto":
        if args.method not in methods(model) and model_norm == "l2":
            raise ValueError(f"--method picks among l-inf certificates; {type(model).__name__} is certified in l2, where "
                             f"--bound picks the Lipschitz bound ({', '.join(bound_names(model.certificate))}). "
                             "Drop --method")
        if args.method not in methods(model):
            raise ValueError(f"--method {args.method} is not available for {type(model).__name__}; "
                             f"available: auto, {', '.join(methods(model)) or '(none)'}")
        cert_kwargs["method"] = args.method
    if args.bound:
        cert_kwargs["bound"] = args.bound
    if args.l2_form:
        cert_kwargs["pairs"] = args.l2_form == "pairs"
    x, y = data.load(name, args.split, data_dir=data_dir, **data_options)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    check_radii(args.eps, args.norm or model_norm, x, args.allow_large_eps, log=lambda s: print(s, file=sys.stderr))
    return _evaluate(args, model, x, y, name, env, cert_kwargs)


def _run_own_model(args: argparse.Namespace, device, env) -> int:
    """Your own torch model, certified in l2 with lipcert's bounds (certify/plain.py)."""
    from .. import data
    from ..certify.plain import as_l2_model, check_same_outputs
    from .own_model import build_own_model

    if not args.model_factory:
        raise ValueError("--weights needs --model-factory MODULE:FUNCTION (the code that builds the architecture)")
    if args.checkpoint:
        raise ValueError(f"give a checkpoint ({args.checkpoint}) or --model-factory, not both")
    if args.norm == "linf":
        raise ValueError("your own models are certified in l2 (by Lipschitz bounds); l-inf certificates need lipcert's "
                         "l-inf-dist nets. Use --norm l2")
    for flag, value in (("--method", args.method != "auto"), ("--p-inf", args.p_inf), ("--raw", args.raw)):
        if value:
            raise ValueError(f"{flag} applies to lipcert checkpoints, not to --model-factory models")
    if not (args.data or args.dataset):
        raise ValueError("--model-factory needs the data to certify on: --data imagefolder:PATH | arrays:FILE, or "
                         "--dataset NAME")
    name, data_dir, data_options = resolve_data(args, None)
    x, y = data.load(name, args.split, data_dir=data_dir, **data_options)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    check_radii(args.eps, "l2", x, args.allow_large_eps, log=lambda s: print(s, file=sys.stderr))
    own = build_own_model(args.model_factory, args.weights)
    model = as_l2_model(own, tuple(x.shape[1:]))
    check_same_outputs(own, model, x[:64])
    model = model.to(device)
    cert_kwargs = {}
    if args.bound:
        cert_kwargs["bound"] = args.bound
    if args.l2_form:
        cert_kwargs["pairs"] = args.l2_form == "pairs"
    return _evaluate(args, model, x, y, name, env, cert_kwargs)


def _evaluate(args: argparse.Namespace, model, x, y, name: str, env, cert_kwargs: dict) -> int:
    from ..certify import evaluation_summary, format_results, write_radii
    from ..train.distributed import evaluate_sharded

    attack = attack_spec(args)
    ev = evaluate_sharded(model, x, y, args.eps, attack, args.batch_size, env, cert_kwargs,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    if not env.is_main:
        return 0
    results = {"dataset": name, "split": args.split, **evaluation_summary(ev, args.eps, log=print)}
    if ev.cert.method == "l2_bcp":
        results["radius_meaning"] = BCP_RADIUS
    print(format_results(results))
    if "radius_meaning" in results:
        print(f"bcp: {BCP_RADIUS}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    if args.radii:
        write_radii(args.radii, ev.cert)
    return 0
