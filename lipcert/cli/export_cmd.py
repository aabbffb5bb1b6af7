"""``lipcert export CHECKPOINT --format safetensors|torchscript|onnx --out FILE``: a model for
deployment stacks without lipcert.

The exported model takes raw [0, 1] inputs (normalisation is inside), runs at p = inf, and carries
metadata: certificate kind, norm, Lipschitz constant (l-inf-dist nets), normalisation, input shape,
classes, lipcert version, content hash and the lipcert model spec (see ``lipcert.export``). ONNX
needs ``pip install 'lipcert[export]'``.
"""

from __future__ import annotations

import argparse

from .argtypes import output_file
from .models_check import add_integrity_option

SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as safetensors, TorchScript or ONNX", description=__doc__)
    p.add_argument("checkpoint", help="model.pt of a run (or last.pt of a run at p = inf)")
    p.add_argument("--format", required=True, choices=list(SUFFIXES), help="output format")
    p.add_argument("--out", required=True, type=output_file,
                   help="file to write (suggested suffixes: .safetensors, .pt for TorchScript, .onnx)")
    p.add_argument("--raw", action="store_true",
                   help="for training-state checkpoints (last.pt) of EMA runs export the raw weights instead of the EMA ones")
    add_integrity_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    meta = export_checkpoint(args.checkpoint, args.format, args.out, verify=not args.ignore_corruption,
                             use_ema=not args.raw)
    print(f"written: {args.out} ({args.format})")
    for key in ("certificate", "norm", "lipschitz", "lipschitz_note", "input_shape", "num_classes", "normalize_mean",
                "normalize_std", "content_hash"):
        if key in meta:
            print(f"  {key}: {meta[key]}")
    return 0
