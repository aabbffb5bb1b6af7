"""lipcert's CRM step vs an independent re-implementation of the Fazlyab23 authors' step, on mnist5k.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/crm_reference_check.py

Trains 4C3F/4 (ReLU, no input normalisation, as the authors' MNIST) for four epochs of plain
cross-entropy, then compares on one batch of 256 training images, float32, identical weights and
power-iteration vectors: LipLT pairwise bounds, loss, active samples and gradients
(tests/losses/crm_reference.py is the authors' side). Prints the table of docs/liplt-crm.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "losses"))
from crm_reference import AuthorsCRM  # noqa: E402

from lipcert import data  # noqa: E402
from lipcert.bounds.liplt import LipLTEstimator  # noqa: E402
from lipcert.bounds.ltnet import LTNet  # noqa: E402
from lipcert.bounds.span_norms import span_key  # noqa: E402
from lipcert.losses.crm import crm_loss  # noqa: E402
from lipcert.models import build  # noqa: E402

T, LAM = 5.0, 30.0


def main() -> None:
    torch.manual_seed(0)
    x, y = data.load("mnist5k", "train")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    model = build("4c3f", in_shape=(1, 28, 28), width=0.25, activation="relu", mean=(0.0,), std=1.0)
    opt = torch.optim.Adam(model.parameters(), 2e-3, eps=1e-7)
    for _ in range(4):  # four CE epochs
        for i in range(0, 4000 - 127, 128):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    xb, yb = x[:256], y[:256]
    spans = LTNet.from_model(model).spans()
    g = torch.Generator().manual_seed(1)
    fresh = {(sp.s, sp.e): torch.randn(1, *sp.in_shape, generator=g) for sp in spans}
    warm = LipLTEstimator("liplt", 2000)
    for sp in spans:
        warm.vectors.put_block(span_key(sp), fresh[(sp.s, sp.e)])
    with torch.no_grad():
        l_conv = warm(model).pairwise
    conv = {(sp.s, sp.e): warm.vectors.get_block(span_key(sp)).reshape(1, *sp.in_shape) for sp in spans}
    iu = torch.triu_indices(10, 10, 1)
    with torch.no_grad():
        probe = crm_loss(model(xb), yb, l_conv, T, LAM)
    r_med = float(probe.min_radius[probe.active].median())  # a threshold that splits the correct samples
    print("| vectors | iters/step | R0 | max rel. diff L_ij | loss lipcert | loss authors | active lipcert / authors (mismatch) "
          "| grad rel. diff, detached | grad rel. diff, through | mean L_ij / converged |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, vec in (("fresh random", fresh), ("converged", conv)):
        for iters in (1, 10):
            for r0 in (2.2, r_med):
                row = {}
                for through in (False, True):
                    est = LipLTEstimator("liplt", iters, grad_through=through)
                    for sp in spans:
                        est.vectors.put_block(span_key(sp), vec[(sp.s, sp.e)] / vec[(sp.s, sp.e)].norm())
                    model.zero_grad()
                    b = est(model)
                    out = crm_loss(model(xb), yb, b.pairwise, T, LAM, r0)
                    out.loss.backward()
                    gl = torch.cat([p.grad.flatten() for p in model.parameters()])
                    model.zero_grad()
                    ref = AuthorsCRM(model, (1, 28, 28), iters, vec)
                    want = ref.loss(xb, yb, T, LAM, r0)  # the authors: gradient through the iterations
                    want["loss"].backward()
                    ga = torch.cat([p.grad.flatten() for p in model.parameters()])
                    pa = want["pairwise"].detach().clone().fill_diagonal_(0)
                    row[through] = dict(
                        pair=float((b.pairwise.detach() - pa).abs().max() / pa.max()),
                        loss=float(out.loss.detach()), loss_ref=float(want["loss"].detach()),
                        act=int(out.active.sum()), act_ref=int(want["active"].sum()),
                        mis=int((out.active != want["active"]).sum()),
                        grad=float((gl - ga).norm() / ga.norm()),
                        ratio=float(b.pairwise.detach()[iu[0], iu[1]].mean() / l_conv[iu[0], iu[1]].mean()),
                    )
                d, t = row[False], row[True]
                print(f"| {name} | {iters} | {r0:.3g} | {max(d['pair'], t['pair']):.1e} | {d['loss']:.6f} | {d['loss_ref']:.6f} | "
                      f"{d['act']} / {d['act_ref']} ({d['mis']}) | {d['grad']:.1e} | {t['grad']:.1e} | {d['ratio']:.3f} |")


if __name__ == "__main__":
    main()
