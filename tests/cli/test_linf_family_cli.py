"""CLI of the l-inf family: train --seeds, ensemble, separation, certify --method."""

from __future__ import annotations

import json

import pytest
import torch

import lipcert
from lipcert.analysis import r_separation
from lipcert.cli import main
from lipcert.cli.separation_cmd import subset_indices
from lipcert.models import LinfEnsemble, LinfVotingEnsemble

FAST = ["--set", "train.epochs=2", "--set", "model.width=32", "--set", "train.batch_size=256", "--set", "eval.attack.steps=2",
        "--set", "train.schedule.p.e1=1", "--set", "train.schedule.p.e2=0.5", "--set", "train.schedule.lam.e1=1",
        "--set", "train.schedule.lam.e2=0.5", "--set", "eval.eps=[0.05]", "--set", "train.eval_every=0"]


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds")
    assert main(["train", "--preset", "digits-linf-ema", "--out", str(out), "--no-progress", "--device", "cpu",
                 "--seeds", "0", "1", *FAST]) == 0
    return out


def test_seeds_train_independent_runs(seeds_dir):
    a, b = lipcert.load(seeds_dir / "seed-0" / "model.pt"), lipcert.load(seeds_dir / "seed-1" / "model.pt")
    assert not torch.equal(a[2].weight, b[2].weight)
    cfg = json.loads(json.dumps(lipcert.checkpoint.read(seeds_dir / "seed-1" / "model.pt")["config"]))
    assert cfg["train"]["seed"] == 1


def test_ensemble_command_reports_members_and_ensemble(seeds_dir, tmp_path, capsys):
    ckpts = [str(seeds_dir / f"seed-{s}" / "model.pt") for s in (0, 1)]
    js = tmp_path / "e.json"
    assert main(["ensemble", *ckpts, "--eps", "0.05", "--attack", "pgd", "--steps", "3", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2 (averaged logits)" in out and "best member" in out
    res = json.loads(js.read_text())
    assert len(res["members"]) == 2 and res["ensemble"]["method"] == "ensemble_margin+interval"
    assert res["ensemble"]["eps"]["0.05"]["soundness_violations"] == 0
    x, y = lipcert.data.load("digits", "test")
    ens = LinfEnsemble([lipcert.load(c) for c in ckpts])
    cert = lipcert.certify.certify(ens, x, y)
    assert res["ensemble"]["eps"]["0.05"]["certified_accuracy"] == cert.certified_accuracy(0.05)
    member0 = lipcert.certify.certify(lipcert.load(ckpts[0]), x, y)
    assert res["members"][0]["eps"]["0.05"]["certified_accuracy"] == member0.certified_accuracy(0.05)
    # raw (non-EMA) weights of the training-state checkpoints
    last = [str(seeds_dir / f"seed-{s}" / "last.pt") for s in (0, 1)]
    assert main(["ensemble", *last, "--raw", "--eps", "0.05", "--json", str(js)]) == 0
    raw = json.loads(js.read_text())
    assert raw["members"][0]["clean_accuracy"] != res["members"][0]["clean_accuracy"] or raw["members"][1]["clean_accuracy"] != res["members"][1]["clean_accuracy"]


def test_ensemble_command_votes_soundly(seeds_dir, tmp_path, capsys):
    ckpts = [str(seeds_dir / f"seed-{s}" / "model.pt") for s in (0, 1)]
    js = tmp_path / "v.json"
    assert main(["ensemble", *ckpts, "--combine", "vote", "--eps", "0.05", "--attack", "pgd", "--steps", "3",
                 "--json", str(js)]) == 0
    assert "ensemble of 2 (majority vote)" in capsys.readouterr().out
    res = json.loads(js.read_text())
    assert res["combine"] == "vote" and res["ensemble"]["method"].startswith("voting(")
    assert res["ensemble"]["eps"]["0.05"]["soundness_violations"] == 0
    x, y = lipcert.data.load("digits", "test")
    cert = lipcert.certify.certify(LinfVotingEnsemble([lipcert.load(c) for c in ckpts]), x, y)
    assert res["ensemble"]["eps"]["0.05"]["certified_accuracy"] == cert.certified_accuracy(0.05)
    # two voters: a tie goes to the lower class, so (unless the vote is class 0) both members must keep
    # their own votes (each certified around its own prediction)
    nets = [lipcert.load(c) for c in ckpts]
    both = torch.stack([lipcert.certify.certify(n, x, n(x).argmax(1)).radius for n in nets]).amin(0)
    assert (cert.radius <= torch.where(cert.prediction == 0, cert.radius, both)).all()
    assert (cert.radius[cert.prediction != 0] > 0).any()


def test_certify_method_best_reports_margin_column(seeds_dir, tmp_path, capsys):
    js = tmp_path / "c.json"
    assert main(["certify", str(seeds_dir / "seed-0" / "model.pt"), "--eps", "0.05", "--method", "best", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["method"] == "linf_margin+interval"
    e = res["eps"]["0.05"]
    assert e["certified_accuracy"] >= e["certified_accuracy_margin"]
    assert "(margin alone)" in capsys.readouterr().out
    assert main(["certify", str(seeds_dir / "seed-0" / "model.pt"), "--eps", "0.05", "--method", "nope"]) == 2


def test_separation_command_matches_brute_force(tmp_path, capsys):
    js = tmp_path / "s.json"
    assert main(["separation", "--dataset", "mnist5k", "--subset", "300", "--json", str(js), "--nn-check"]) == 0
    out = capsys.readouterr().out
    assert "r = " in out and "certified training accuracy at eps = 0.99 r: 1.0000" in out
    res = json.loads(js.read_text())
    assert set(res) >= {"min_dist_train", "min_dist_test_train", "r"}
    x, y = lipcert.data.load("mnist5k", "train")
    xt, yt = lipcert.data.load("mnist5k", "test")
    i, it = subset_indices(len(y), 300, 0), subset_indices(len(yt), 300, 1)
    x, y, xt, yt = x[i].flatten(1).double(), y[i], xt[it].flatten(1).double(), yt[it]
    d = (x[:, None] - x[None]).abs().amax(-1)
    d[y[:, None] == y[None]] = float("inf")
    dt = (xt[:, None] - x[None]).abs().amax(-1)
    dt[yt[:, None] == y[None]] = float("inf")
    # exact: l-inf distances are maxima of correctly rounded |a - b| (no summation order)
    assert res["min_dist_train"] == float(d.min()) and res["min_dist_test_train"] == float(dt.min())
    assert res["r"] == res["min_dist_train"] / 2
    assert r_separation(x, y).r == res["r"]


def test_report_with_empirical_lipschitz(seeds_dir, capsys):
    run = seeds_dir / "seed-0"
    assert main(["report", str(run), "--lipschitz", "8", "--lipschitz-p", "2", "inf"]) == 0
    text = (run / "report.md").read_text()
    assert "Empirical Lipschitz constant" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2 |") or line.startswith("| inf |")]
    assert len(rows) == 2
    inf_row = [float(v) for v in rows[1].strip("|").split("|")[1:]]
    assert inf_row[2] <= inf_row[3] * (1 + 1e-4)  # max estimate <= proven 1 / std at p = inf
