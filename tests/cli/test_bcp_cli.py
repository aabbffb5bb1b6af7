"""CLI: ``lipcert certify --bound bcp --eps ...`` on a tiny Local-Lip-G run (the BCP protocol of Huang21)."""

from __future__ import annotations

import json

import pytest

from lipcert.cli import main

FAST = ["--set", "train.epochs=2", "--set", "model.width=0.125", "--set", "eval.attack.steps=3",
        "--set", "eval.eps=[0.1]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bcprun")
    assert main(["train", "--preset", "digits-l2-local", "--out", str(out), "--no-progress", "--device", "cpu", *FAST]) == 0
    return out


def test_certify_bound_bcp_reports_per_eps_and_what_certified(run_dir, tmp_path, capsys):
    res = {}
    for bound in ("local-upper", "bcp"):
        js = tmp_path / f"{bound}.json"
        assert main(["certify", str(run_dir / "model.pt"), "--bound", bound, "--eps", "0.05", "0.1", "--attack",
                     "--steps", "5", "--json", str(js), "--limit", "120"]) == 0
        res[bound] = json.loads(js.read_text())
    out = capsys.readouterr().out
    bcp = res["bcp"]
    assert bcp["method"] == "l2_bcp" and bcp["bound"] == "upper" and "largest eps certified" in bcp["radius_meaning"]
    assert "bcp: certified per eps" in out
    for key in ("0.05", "0.1"):
        entry, ball = bcp["eps"][key], res["local-upper"]["eps"][key]
        assert entry["certified_accuracy"] >= ball["certified_accuracy"]
        assert entry["soundness_violations"] == 0
        assert sum(entry.get("certified_by", {}).values()) == round(entry["certified_accuracy"] * bcp["n"])
    assert "radius_meaning" not in res["local-upper"]


def test_bound_choices_come_from_the_registry(run_dir, capsys):
    with pytest.raises(SystemExit):
        main(["certify", str(run_dir / "model.pt"), "--bound", "tight", "--eps", "0.1"])
    assert "bcp" in capsys.readouterr().err  # the choices come from the registry
