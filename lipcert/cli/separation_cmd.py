"""``lipcert separation --dataset NAME``: r-separation of a dataset (Zhang22 Def. 3.1, Table 1).

Prints the exact minimum l-inf distance between differently labelled training points, between a
test point and a differently labelled training point, and r = half the former. With ``--nn-check``
it also builds the nearest-neighbour l-inf-dist net of Zhang22 Thm 3.2 and certifies the training set
at eps = 0.99 r (it must certify 100%).
"""

from __future__ import annotations

import argparse
import json
import time

from .argtypes import output_file, positive_int
from .options_check import warn_ignored_data_dir


def add_parser(sub) -> None:
    p = sub.add_parser("separation", help="r-separation of a dataset (Zhang22 Def. 3.1)", description=__doc__)
    p.add_argument("--dataset", required=True, help="dataset name: digits, mnist5k (embedded) or mnist, fashion-mnist, cifar10, ... (with --data-dir)")
    p.add_argument("--data-dir", help="directory holding the dataset files (not needed for embedded datasets)")
    p.add_argument("--subset", type=positive_int, metavar="N",
                   help="only a random subset of N points of each split (seeded; see --seed), e.g. for a quick look")
    p.add_argument("--seed", type=int, default=0, help="seed of --subset (default 0)")
    p.add_argument("--no-test", action="store_true", help="skip the test-to-train distance")
    p.add_argument("--nn-check", action="store_true", help="certify the nearest-neighbour net (Zhang22 Thm 3.2) at 0.99 r")
    p.add_argument("--json", type=output_file, help="write min_dist_train, min_dist_test_train, r (and details) to this file")
    p.set_defaults(run=run)


def subset_indices(n: int, k: int, seed: int):
    """Sorted indices of a random subset of k of n points (all of them if k >= n)."""
    import torch

    if k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def run(args: argparse.Namespace) -> int:
    from .. import data
    from ..analysis import nearest_neighbour_net, r_separation

    warn_ignored_data_dir(args.dataset, args.data_dir)
    x, y = data.load(args.dataset, "train", data_dir=args.data_dir)
    xt = yt = None
    if not args.no_test:
        xt, yt = data.load(args.dataset, "test", data_dir=args.data_dir)
    if args.subset:
        i = subset_indices(len(y), args.subset, args.seed)
        x, y = x[i], y[i]
        if xt is not None:
            it = subset_indices(len(yt), args.subset, args.seed + 1)
            xt, yt = xt[it], yt[it]
    t0 = time.perf_counter()
    s = r_separation(x, y, xt, yt)
    seconds = time.perf_counter() - t0
    i, j = s.train_pair
    print(f"dataset {args.dataset}: {s.n_train} train" + (f" / {s.n_test} test" if s.n_test else "") + " points (l-inf, raw [0, 1] pixels)")
    print(f"min distance, differently labelled training points: {s.min_dist_train:.6g}  (train #{i} label {int(y[i])}, #{j} label {int(y[j])})")
    if s.min_dist_test_train is not None:
        ti, tj = s.test_pair
        print(f"min distance, test point to a differently labelled training point: {s.min_dist_test_train:.6g}  (test #{ti}, train #{tj})")
    print(f"r = {s.r:.6g}  (the training set is r-separated: Zhang22 Def. 3.1)   [{seconds:.1f} s]")
    out = {"dataset": args.dataset, "subset": args.subset, **s.to_dict(), "seconds": seconds}
    if args.nn_check:
        from ..certify import certify

        if s.r <= 0:
            print("nearest-neighbour check skipped: r = 0 (differently labelled duplicates)")
        else:
            net = nearest_neighbour_net(x, y, num_classes=data.info(args.dataset).num_classes)
            cert = certify(net, x, y)
            acc = cert.certified_accuracy(0.99 * s.r)
            print(f"nearest-neighbour l-inf-dist net (Zhang22 Thm 3.2, hidden {len(y)}): certified training accuracy at eps = 0.99 r: {acc:.4f}")
            out["nn_certified_at_099r"] = acc
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0
