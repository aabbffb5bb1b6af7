"""The training loop end to end on the digits dataset: results files, resume, clear errors."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import lipcert
from lipcert.config import apply_overrides, load_preset
from lipcert.train import Trainer

FAST = ["train.epochs=4", "model.width=32", "model.depth=3", "train.batch_size=256",
        "train.schedule.p.e1=1", "train.schedule.p.e2=2", "train.schedule.lam.e1=1", "train.schedule.lam.e2=2",
        "eval.attack.steps=3"]


def _cfg(*extra):
    return apply_overrides(load_preset("digits-linf"), FAST + list(extra))


def test_run_writes_results_and_model(tmp_path):
    results = Trainer(_cfg(), tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["dataset"] == "digits" and saved["split"] == "test" and saved["norm"] == "linf"
    assert saved["n"] == 359 and set(saved["eps"]) == {"0.05", "0.1"}
    for entry in saved["eps"].values():
        assert 0 <= entry["certified_accuracy"] <= entry["pgd_accuracy"] <= saved["clean_accuracy"]
        assert entry["soundness_violations"] == 0
    assert saved["train_seconds"] > 0 and results["clean_accuracy"] == saved["clean_accuracy"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["p"] == "inf"
    rows = (tmp_path / "radii.csv").read_text().splitlines()
    assert rows[0] == "index,label,prediction,radius,certificate" and len(rows) == 360  # which part certified it
    model = lipcert.load(tmp_path / "model.pt")
    x, y = lipcert.data.load("digits", "test")
    acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(saved["clean_accuracy"], abs=1e-6)
    assert (tmp_path / "config.yaml").exists()


def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = Trainer(_cfg(), tmp_path / "full", device="cpu", progress=False, log=lambda s: None)
    full.fit()

    calls = {"n": 0}
    original = Trainer.train_epoch

    def crash_after_two(self, bar):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, bar)

    monkeypatch.setattr(Trainer, "train_epoch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(), tmp_path / "cut", device="cpu", progress=False, log=lambda s: None).fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = Trainer(_cfg(), tmp_path / "cut", device="cpu", progress=False, log=lambda s: None)
    resumed.fit(resume=True)
    # bit-identical by construction: the resumed epochs replay the same code path on the same
    # inputs and RNG state with the same thread count, in the same process (no cross-CPU compare)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert json.loads((tmp_path / "full" / "results.json").read_text())["eps"] == json.loads(
        (tmp_path / "cut" / "results.json").read_text())["eps"]


def test_resume_refuses_other_config_and_existing_runs(tmp_path):
    Trainer(_cfg("train.epochs=1"), tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg("train.epochs=1"), tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    with pytest.raises(ValueError, match="train.seed: 0 != 3"):
        Trainer(_cfg("train.epochs=1", "train.seed=3"), tmp_path, device="cpu", progress=False, log=lambda s: None).fit(resume=True)


def test_bad_settings_are_clear(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        Trainer(_cfg("train.batch_size=100000"), tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        Trainer(_cfg("objective.name=nope"), tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(_cfg("optim.name=nope"), tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="does not take"):
        Trainer(_cfg("model.widht=3"), tmp_path, device="cpu", progress=False)


def test_model_evaluated_at_p_inf_after_training(tmp_path):
    Trainer(_cfg("train.epochs=1", "train.schedule.p.e1=5"), tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    model = lipcert.load(tmp_path / "model.pt")
    assert lipcert.nn.current_p(model) == math.inf


@pytest.mark.parametrize("name", ["gpu", "cuda0", "nvidia"])
def test_resolve_device_names_the_valid_choices(name):
    """A misspelt device got torch's list of 20 internal device types."""
    from lipcert.train import resolve_device

    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_val_fraction_evaluates_on_held_out_train_samples(tmp_path):
    cfg = _cfg("data.val_fraction=0.25", "data.val_seed=3")
    trainer = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None)
    x, y = lipcert.data.load("digits", "train")
    _, val_idx = lipcert.data.validation_split(y, 0.25, 3)
    assert torch.equal(trainer.x_test, x[val_idx]) and len(trainer.y_train) + len(val_idx) == len(y)
    # no held-out image is a training image (digits has no exact duplicates across these parts)
    flat_train, flat_val = trainer.x_train.flatten(1), trainer.x_test.flatten(1)
    assert not any(bool((flat_train == v).all(1).any()) for v in flat_val[:50])
    saved = trainer.fit()
    assert saved["split"] == "val" and saved["n"] == len(val_idx)
    assert all(e["soundness_violations"] == 0 for e in saved["eps"].values())


def test_val_fraction_out_of_range_is_a_config_error():
    from lipcert.config import ConfigError

    with pytest.raises(ConfigError, match="val_fraction"):
        _cfg("data.val_fraction=1.5")


def test_kernels_are_loaded_before_the_clock_starts(tmp_path, monkeypatch):
    """The one-time native build happens before training is timed, and the log names the backend."""
    from lipcert.nn.kernels import native

    calls: list[float] = []
    real_load = native.load

    def load_and_record():
        calls.append(time.perf_counter())
        return real_load()

    monkeypatch.setattr(native, "load", load_and_record)
    lines: list[str] = []
    trainer = Trainer(_cfg("train.epochs=1"), tmp_path, device="cpu", progress=False, log=lines.append)
    started: list[float] = []
    real_epoch = trainer.train_epoch
    monkeypatch.setattr(trainer, "train_epoch", lambda bar: (started.append(time.perf_counter()), real_epoch(bar))[1])
    trainer.fit()
    assert any(line.startswith("lipcert kernels:") for line in lines), lines
    if native.unavailable_reason() is None:
        assert calls and started and calls[0] < started[0]
