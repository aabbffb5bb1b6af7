"""CLI of LipLT / CRM (Fazlyab23): a tiny CRM run, ``lipcert bounds`` with naive / liplt / pairwise_*, ``certify --bound liplt``."""

from __future__ import annotations

import json

import pytest

from lipcert.cli import main

FAST = ["--set", "train.epochs=2", "--set", "model.width=0.125", "--set", "objective.warmup_epochs=1",
        "--set", "eval.attack.steps=3", "--set", "eval.eps=[0.1]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("crmrun")
    assert main(["train", "--preset", "digits-l2-crm", "--out", str(out), "--no-progress", "--device", "cpu", *FAST]) == 0
    return out


def test_crm_run_logs_and_results(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["crm_active"] == 0.0 and "lip_pair_mean" in lines[1]  # CE warm-up, then CRM
    res = json.loads((run_dir / "results.json").read_text())
    assert res["norm"] == "l2" and res["bound"] == "upper" and res["eps"]["0.1"]["soundness_violations"] == 0


def test_bounds_lists_naive_liplt_pairwise(run_dir, tmp_path, capsys):
    js = tmp_path / "b.json"
    names = ["naive", "liplt", "pairwise_mean", "pairwise_max", "pairwise_naive_mean"]
    assert main(["bounds", str(run_dir / "model.pt"), "--limit", "4", "--bounds", *names, "--json", str(js)]) == 0
    out = json.loads(js.read_text())
    for n in names:
        assert out["kind"][n] == "upper" and out["seconds"][n] >= 0 and out[n] > 0
    assert out["liplt"] <= out["naive"] * (1 + 1e-9)
    assert out["pairwise_mean"] <= out["pairwise_max"] <= 2**0.5 * out["liplt"] * (1 + 1e-9)
    assert out["pairwise_mean"] <= out["pairwise_naive_mean"] * (1 + 1e-9)
    text = capsys.readouterr().out
    assert "liplt" in text and "[upper]" in text


def test_certify_bound_liplt_vs_naive(run_dir, tmp_path, capsys):
    res = {}
    for bound in ("naive", "liplt", "liplt-estimate"):
        js = tmp_path / f"{bound}.json"
        assert main(["certify", str(run_dir / "model.pt"), "--norm", "l2", "--bound", bound, "--eps", "0.05", "0.1",
                     "--attack", "pgd", "--steps", "5", "--json", str(js)]) == 0
        res[bound] = json.loads(js.read_text())
    assert res["liplt"]["bound"] == "upper" and res["liplt-estimate"]["bound"] == "estimate"
    assert "NOT a proof" in capsys.readouterr().out
    for e in ("0.05", "0.1"):
        assert res["liplt"]["eps"][e]["certified_accuracy"] >= res["naive"]["eps"][e]["certified_accuracy"]
        assert res["liplt"]["eps"][e]["soundness_violations"] == 0
