"""data.train_fraction: a fixed random train / held-out split (Fazlyab23's authors train on 90 %)."""

from __future__ import annotations

import pytest
import torch

from lipcert.config import ConfigError, apply_overrides, load_preset
from lipcert.data import holdout_split, load
from lipcert.train import Trainer


def test_split_partitions_the_indices_and_is_fixed():
    keep, rest = holdout_split(1000, 0.9)
    assert len(keep) == 900 and len(rest) == 100
    assert torch.equal(torch.cat([keep, rest]).sort().values, torch.arange(1000))
    assert torch.equal(keep, keep.sort().values)
    again = holdout_split(1000, 0.9)
    assert torch.equal(again[0], keep) and torch.equal(again[1], rest)
    other = holdout_split(1000, 0.9, seed=1)
    assert not torch.equal(other[1], rest)
    assert float(rest.float().mean()) == pytest.approx(500, abs=90)  # random, not the tail
    full, none = holdout_split(10, 1.0)
    assert len(full) == 10 and len(none) == 0
    with pytest.raises(ValueError, match="train_fraction"):
        holdout_split(10, 0.0)
    with pytest.raises(ValueError, match="keeps no sample"):
        holdout_split(10, 0.05)


def test_trainer_trains_on_the_fraction_and_evaluates_the_held_out_part(tmp_path):
    fast = ["train.epochs=1", "model.width=16", "model.depth=3", "train.batch_size=256", "eval.attack.steps=2",
            "train.schedule.p.e1=1", "train.schedule.p.e2=1", "train.schedule.lam.e1=1", "train.schedule.lam.e2=1"]
    cfg = apply_overrides(load_preset("digits-linf"), fast + ["data.train_fraction=0.9", "eval.split=heldout"])
    trainer = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None)
    x, y = load("digits", "train")
    keep, rest = holdout_split(len(y), 0.9)
    assert torch.equal(trainer.x_train, x[keep]) and torch.equal(trainer.y_test, y[rest])
    results = trainer.fit()
    assert results["split"] == "heldout" and results["n"] == len(rest)
    with pytest.raises(ConfigError, match="heldout needs data.train_fraction"):
        apply_overrides(load_preset("digits-linf"), ["eval.split=heldout"])
    with pytest.raises(ConfigError, match="train_fraction must be in"):
        apply_overrides(load_preset("digits-linf"), ["data.train_fraction=1.5"])
