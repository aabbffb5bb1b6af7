"""``lipcert bounds`` and ``lipcert certify --norm l2 --bound ...`` on a tiny digits run."""

from __future__ import annotations

import csv
import json

import pytest

from lipcert.bounds import BOUNDS, register_bound
from lipcert.cli import main
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

FAST = ["--set", "train.epochs=2", "--set", "model.width=0.125", "--set", "eval.attack.steps=3", "--set", "eval.eps=[0.1]",
        "--set", "train.schedule.eps.t1=1", "--set", "train.schedule.lam.t1=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("l2run")
    assert main(["train", "--preset", "digits-l2-local", "--out", str(out), "--no-progress", "--device", "cpu", *FAST]) == 0
    return out


def test_train_writes_l2_results(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    assert res["norm"] == "l2" and res["bound"] == "upper" and res["method"] == "l2_lipschitz_best"
    assert res["eps"]["0.1"]["soundness_violations"] == 0
    rows = list(csv.DictReader((run_dir / "radii.csv").open()))
    assert rows[0].keys() >= {"index", "radius", "bound"}
    assert {r["bound"] for r in rows} <= {"none", "global (upper)", "local (upper)", "liplt (upper)"}


def test_bounds_command_json_and_csv(run_dir, tmp_path, capsys):
    js, per = tmp_path / "b.json", tmp_path / "b.csv"
    assert main(["bounds", str(run_dir / "model.pt"), "--limit", "12", "--json", str(js), "--per-sample", str(per),
                 "--local-iters", "200"]) == 0
    out = json.loads(js.read_text())
    assert out["eps"] == 0.1 and out["n"] == 12  # the run's eval eps by default
    for key in ("global", "global_power", "local_mean", "local_max", "local_upper_mean"):
        assert key in out
    mine = ("global", "global_power", "local", "local_upper")  # (bounds/pairwise.py adds naive, liplt, pairwise_*)
    assert {k: out["kind"][k] for k in mine} == {"global": "upper", "global_power": "estimate", "local": "estimate", "local_upper": "upper"}
    assert set(out["seconds"]) >= set(mine)
    assert out["global_power"] <= out["global"] * (1 + 1e-9)
    assert out["local_max"] <= out["global"] * (1 + 1e-9) and out["local_upper_max"] <= out["global"] * (1 + 1e-9)
    rows = list(csv.DictReader(per.open()))
    assert len(rows) == 12 and set(rows[0]) == {"index", "label", "local", "local_upper"}
    text = capsys.readouterr().out
    assert "[upper]" in text and "[estimate]" in text


def test_bounds_registry_is_extensible(run_dir, tmp_path):
    register_bound("test_constant", lambda ctx: 42.0, "upper", "a constant, for this test")
    try:
        js = tmp_path / "c.json"
        assert main(["bounds", str(run_dir / "model.pt"), "--limit", "4", "--bounds", "test_constant", "global",
                     "--json", str(js)]) == 0
        out = json.loads(js.read_text())
        assert out["test_constant"] == 42.0 and "global" in out and "local_mean" not in out
    finally:
        BOUNDS.pop("test_constant")


@pytest.mark.parametrize("bound,label", [("global", "upper"), ("best", "upper"), ("local", "estimate")])
def test_certify_l2_labels_each_bound(run_dir, tmp_path, capsys, bound, label):
    js = tmp_path / "r.json"
    assert main(["certify", str(run_dir / "model.pt"), "--norm", "l2", "--bound", bound, "--eps", "0.05", "0.1",
                 "--attack", "pgd", "--steps", "3", "--limit", "40", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["norm"] == "l2" and res["bound"] == label and res["method"] == f"l2_lipschitz_{bound}"
    assert res["eps"]["0.1"]["soundness_violations"] == 0
    assert ("NOT a proof" in capsys.readouterr().out) == (label == "estimate")


def test_certify_l2_form_sqrt2_is_never_larger(run_dir, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["certify", str(run_dir / "model.pt"), "--eps", "0.05", "--limit", "40", "--json", str(a)]) == 0
    assert main(["certify", str(run_dir / "model.pt"), "--eps", "0.05", "--limit", "40", "--l2-form", "sqrt2",
                 "--json", str(b)]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert rb["method"] == "l2_lipschitz_best_sqrt2"
    assert rb["eps"]["0.05"]["certified_accuracy"] <= ra["eps"]["0.05"]["certified_accuracy"]


@pytest.mark.parametrize(
    "extra,message",
    [(["--norm", "linf"], "cannot be certified in linf"), (["--bound", "tight"], "invalid choice"),
     (["--method", "best"], "--bound picks the Lipschitz bound")],  # was "available: auto, (none)"
)
def test_certify_l2_user_errors(run_dir, capsys, extra, message):
    code = 2
    try:
        code = main(["certify", str(run_dir / "model.pt"), "--eps", "0.1", *extra])
    except SystemExit as exc:  # argparse rejects bad choices itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_bounds_user_errors(run_dir, capsys):
    assert main(["bounds", str(run_dir / "model.pt"), "--bounds", "nope"]) == 2
    assert "unknown bound" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error, caught by argparse (exit code 2)
        main(["bounds", str(run_dir / "model.pt"), "--eps", "-1"])
    assert exc.value.code == 2
    assert "--eps" in capsys.readouterr().err


def test_bounds_reports_progress_on_stderr(run_dir, capsys):
    """Nothing was printed until every bound was done (Huang21's local estimate alone takes minutes on mnist5k)."""
    assert main(["bounds", str(run_dir / "model.pt"), "--limit", "4", "--bounds", "global", "local_upper"]) == 0
    out, err = capsys.readouterr()
    assert "computing 2 bound(s) on 4 samples: global, local_upper" in err
    assert "done global:" in err and "done local_upper:" in err and "done" not in out
