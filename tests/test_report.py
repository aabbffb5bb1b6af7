"""report.md: what it says for short runs and missing inputs."""

from __future__ import annotations

import json

import pytest

from lipcert.report import make_report


def _results(run, **extra):
    run.mkdir(parents=True, exist_ok=True)
    res = {"dataset": "digits", "split": "test", "n": 3, "norm": "linf", "method": "linf_margin", "bound": "exact",
           "clean_accuracy": 0.5, "eps": {"0.1": {"certified_accuracy": 0.25}}, **extra}
    (run / "results.json").write_text(json.dumps(res))
    (run / "radii.csv").write_text("index,label,prediction,radius\n0,1,1,0.2\n1,0,0,0.05\n2,1,0,0.0\n")


@pytest.mark.parametrize("seconds,text", [(4.87, "training time: 4.9 s"), (150.0, "training time: 2.5 min")])
def test_training_time_of_short_runs_is_not_zero(tmp_path, seconds, text):
    """A 5 s run said 'training time: 0.0 min'."""
    _results(tmp_path / "run", train_seconds=seconds)
    assert text in make_report(tmp_path / "run").read_text()


def test_missing_run_and_missing_results_are_told_apart(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory .* does not exist"):
        make_report(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no results.json.*--json .*results.json --radii"):
        make_report(tmp_path / "half")
