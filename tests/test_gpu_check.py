"""benchmarks/gpu_check.sh / gpu_check.py on the CPU: argument parsing, the plan, the synthetic
CIFAR data path, the table, and (slow) the whole script at toy sizes. The GPU numbers themselves
are not testable here (BENCHMARKS.md says the script has not run on a GPU yet)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ENV = dict(os.environ, PYTHON=sys.executable)  # the script's Python: this one


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


gc = _module()


def test_arguments_and_plan(tmp_path):
    args = gc.parse_args([])
    assert args.device == "cuda" and not args.tiny and args.budget == 480
    pl = gc.plan(args, tmp_path)
    assert list(pl.commands) == list(gc.STEPS)
    assert sum(pl.timeouts.values()) <= 480  # per-step timeouts fit the 8 minutes
    kern = pl.commands["kernels"]
    assert kern[kern.index("--shapes") + 1] == "512,3072,5120" and {"ours", "cdist"} <= set(kern)
    assert kern[kern.index("--p") + 1: kern.index("--p") + 4] == ["inf", "8", "20.5"] and "--no-train" in kern
    train = pl.commands["train"]
    assert "--skip-kernels" in train and train[train.index("--train-width") + 1] == "5120"
    assert train[train.index("--train-batch") + 1] == "512"
    epoch = pl.commands["epoch"]
    assert "cifar10-linf-boost-8" in epoch and "train.epochs=1" in epoch
    assert list(gc.plan(gc.parse_args(["--skip", "tests", "epoch"]), tmp_path).commands) == ["kernels", "train"]
    with pytest.raises(SystemExit):
        gc.parse_args(["--device", "cpu"])  # full sizes on a CPU: refused with a message
    with pytest.raises(SystemExit):
        gc.parse_args(["--skip", "nonsense"])


def test_dry_run_prints_every_step(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split("]")[0][1:] for ln in lines] == list(gc.STEPS)
    assert "pytest -m gpu" in lines[0] and "pip install" not in res.stdout  # dry run installs nothing


def test_synthetic_cifar_loads_through_lipcert(tmp_path):
    from lipcert import data

    gc.write_synthetic_cifar(tmp_path, 23, 7)
    with pytest.warns(data.DataWarning, match="official split has 50000"):
        x, y = data.load("cifar10", "train", tmp_path)
    assert x.shape == (23, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.shape == (23,) and 0 <= int(y.min()) and int(y.max()) <= 9
    with pytest.warns(data.DataWarning):
        xt, _ = data.load("cifar10", "test", tmp_path)
    assert xt.shape == (7, 3, 32, 32)


def test_table_from_step_results(tmp_path):
    kernels = {"rows": [
        {"shape": "512x3072x5120", "p": "inf", "mode": "fwd", "method": "ours", "ms": 2.0, "note": ""},
        {"shape": "512x3072x5120", "p": "inf", "mode": "fwd", "method": "cdist", "ms": 10.0, "note": ""},
        {"shape": "512x3072x5120", "p": "8", "mode": "fwd", "method": "ours", "ms": None, "note": "CHECK FAILED: y"},
    ]}
    rows = gc.kernel_rows(kernels)
    assert rows[0].value == "2.0 ms" and "(5.0x)" in rows[0].reference and rows[0].status == "ok"
    assert rows[1].status.startswith("CHECK FAILED")  # a wrong kernel is reported, not timed
    train = gc.train_rows({"train": [{"p": "20.5", "batch": 512, "ms": 150.0}]}, tiny=False)
    assert train[0].value == "150.0 ms" and train[0].reference == "187 ms RTX 3090"
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"train_seconds": 12.5, "n": 1000}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    epoch = gc.epoch_rows(run, 20.0, 50000)
    table = gc.format_table(rows + train + epoch)
    lines = table.splitlines()
    assert lines[0].startswith("| step |") and len(lines) == 2 + len(rows) + 2
    assert "12.5 s train" in table and "17.6 s" in table and all(ln.count("|") == 7 for ln in lines)


def test_tiny_epoch_on_synthetic_cifar_on_cpu(tmp_path):
    """The one-epoch step end to end at toy size: synthetic CIFAR files -> lipcert train -> table row
    (the slow test runs every step)."""
    code = gc.main(["--device", "cpu", "--tiny", "--skip", "tests", "kernels", "train", "--out", str(tmp_path),
                    "--budget", "200"])
    assert code == 0
    res = json.loads((tmp_path / "epoch-run" / "results.json").read_text())
    assert res["n"] == 32 and res["dataset"] == "cifar10"
    assert len((tmp_path / "epoch-run" / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch


@pytest.mark.slow
def test_whole_script_tiny_on_cpu(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--no-install", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    table = res.stdout[res.stdout.index("| step |"):]
    for step in gc.STEPS:
        assert f"| {step} |" in table
    assert "| ok |" in table and "failed" not in table
