"""Two ``lipcert train`` into one --out: the second is refused at once, naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipcert.checkpoint import CheckpointWarning
from lipcert.cli import main

ROOT = Path(__file__).resolve().parents[2]
#: long enough to still be running while the second process starts (it is killed after)
SLOW = ["--set", "train.epochs=100000", "--set", "model.width=32", "--set", "model.depth=3",
        "--set", "train.eval_every=0", "--set", "train.batch_size=128"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lipcert", "train", "--preset", "digits-linf", "--out", str(out), "--no-progress",
            "--device", "cpu", *SLOW, *extra]


def test_second_training_into_the_same_out_is_refused(tmp_path, capsys):
    """The first training is a separate process; the second runs in this one (saves a start-up)."""
    out = tmp_path / "run"
    first = subprocess.Popen(_train(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        lock = out / ".lock"
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None, f"the first training ended early: {first.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the first training never took the lock"
            time.sleep(0.2)
        assert json.loads(lock.read_text())["pid"] == first.pid
        capsys.readouterr()
        assert main(_train(out)[3:]) == 2
        err = capsys.readouterr().err
        assert f"is in use: a lipcert train is writing to it (pid {first.pid} on host" in err
        assert "choose another --out" in err and "Traceback" not in err
        assert main(_train(out, "--resume")[3:]) == 2  # --resume does not bypass the lock
        assert "is in use" in capsys.readouterr().err
        assert first.poll() is None  # the first run is untouched
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


FAST = ["--set", "train.epochs=1", "--set", "model.width=16", "--set", "model.depth=2", "--set", "train.eval_every=0",
        "--set", "train.batch_size=256", "--set", "eval.attack.steps=1", "--set", "train.schedule.p.e1=0",
        "--set", "train.schedule.p.e2=0", "--set", "train.schedule.lam.e1=0", "--set", "train.schedule.lam.e2=0"]


def _cli(out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "digits-linf", "--out", str(out), "--no-progress", "--device", "cpu", *FAST, *extra]


def test_each_seed_directory_is_locked(tmp_path, capsys):
    from lipcert.runlock import RunLock

    with RunLock(tmp_path / "seed-2", command="other trainer"):
        assert main(_cli(tmp_path, "--seeds", "2")) == 2
    err = capsys.readouterr().err
    assert "seed-2 is in use" in err and "(other trainer)" in err


def test_resume_checks_the_checkpoint_hash(tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    assert main(_cli(out)) == 0
    raw = torch.load(out / "last.pt", weights_only=True)
    name = next(k for k, t in raw["model"].items() if t.is_floating_point() and t.numel())
    raw["model"][name].view(-1)[0] += 1.0
    torch.save(raw, out / "last.pt")
    capsys.readouterr()
    assert main(_cli(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "last.pt is corrupted" in err and f"model/{name}" in err and "--ignore-corruption" in err
    with pytest.warns(CheckpointWarning, match="corrupted"):
        assert main(_cli(out, "--resume", "--ignore-corruption")) == 0
