"""Every shipped preset trains: each recipe is run for one short epoch, with its model shrunk and
its dataset replaced by random data of the dataset's shape, so the paper presets (which need a GPU
and local files to run for real) are checked for wiring mistakes -- unknown names, bad settings,
shapes, schedules, objectives -- by the default test run."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lipcert import data
from lipcert.config import apply_overrides, load_preset, preset_names
from lipcert.train import Trainer, build_schedule

N = 48  # samples per split


def _shrink(model: dict) -> dict:
    """The same architecture at toy size (widths and ensemble sizes only)."""
    small = copy.deepcopy(model)
    for key, cap in (("width", 16), ("head_hidden", 8), ("n", 2)):
        if isinstance(small.get(key), int) and small[key] > cap:
            small[key] = cap
    if isinstance(small.get("member"), dict):
        small["member"] = _shrink(small["member"])
    if small["name"] in ("4c3f", "6c2f", "crm-6c2f", "8c2f"):
        small["width"] = 0.125  # channel multiplier
    return small


@pytest.fixture
def random_data(monkeypatch):
    def load(name, split, data_dir=None):
        inf = data.info(name)
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        x = torch.randint(0, 256, (N, *inf.in_shape), generator=g).float() / 255
        return x, torch.arange(N) % inf.num_classes

    monkeypatch.setattr(data, "load", load)


#: 30-45 s each on 2 cores (200 classes, 64 x 64 inputs, local bounds): `pytest -m slow`
SLOW = {"tinyimagenet-l2-local-8c2f", "tinyimagenet-l2-local-8c2f-maxmin"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in preset_names()])
def test_preset_runs_one_short_epoch(name, random_data, tmp_path):
    cfg = apply_overrides(load_preset(name), ["train.epochs=1", "train.batch_size=16", "eval.attack.steps=1",
                                              "eval.attack.restarts=1", "train.eval_every=1"])
    cfg.model = _shrink(cfg.model)
    logs = []
    results = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=logs.append).fit()
    assert results["n"] == N and 0.0 <= results["clean_accuracy"] <= 1.0
    for key, row in results["eps"].items():
        assert 0.0 <= row["certified_accuracy"] <= row.get("pgd_accuracy", 1.0) + 1e-12, key
        assert row.get("soundness_violations", 0) == 0, key
    assert (tmp_path / "run" / "model.pt").exists() and (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("name", preset_names())
def test_preset_schedules_are_defined_over_the_whole_run(name):
    cfg = load_preset(name)
    for key, spec in cfg.train.schedule.items():
        schedule = build_schedule(spec)
        values = [schedule(cfg.train.epochs * f) for f in (0.0, 0.1, 0.5, 0.9, 1.0)]
        assert all(isinstance(v, (int, float)) and not math.isnan(v) for v in values), (key, values)
    assert cfg.eval.eps and all(e >= 0 for e in cfg.eval.eps)


def test_zhang22_presets_pad_crops_with_the_border(random_data, tmp_path):
    """The Zhang22 presets crop with edge padding (the v2 code's ``padding_mode='edge'``); the trainer uses it."""
    for name in ("mnist-linf-boost-0.3", "cifar10-linf-boost-8"):
        assert load_preset(name).data.pad_mode == "edge"
    cfg = apply_overrides(load_preset("cifar10-linf-boost-8"), ["train.epochs=1", "train.batch_size=16"])
    cfg.model = _shrink(cfg.model)
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=lambda s: None)
    assert trainer.augmenter.pad_mode == "edge" and trainer.augmenter.padding == 3


@pytest.mark.parametrize("name, params", [
    ("fashion-mnist-linf-lenet-mlp", 703_360), ("fashion-mnist-linf-lenet-ensemble", 7_033_600),
    ("cifar10-linf-lenet-ensemble", 7_036_600),
    ("cifar100-linf-lenet-mlp", 749_830), ("cifar100-linf-lenet-ensemble", 7_498_300),
])
def test_emareport_table4_presets_build_the_papers_models(name, params):
    """The EMAReport Table 4 presets build the table's models at full size: its PARAMs column
    (LeNet + MLP, fc 400-120-1024, head 512; the ensembles 10 of them)."""
    from lipcert.train.loop import build_model

    cfg = load_preset(name)
    model = build_model(cfg, data.info(cfg.data.name))
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.rand(2, *data.info(cfg.data.name).in_shape)
    assert model(x).shape == (2, data.info(cfg.data.name).num_classes)


@pytest.mark.parametrize("strength", ["maug", "saug"])
def test_emareport_stronger_augmentations_train(strength, random_data, tmp_path):
    """data.augment=maug / saug (EMAReport Table 7) reach the trainer's augmenter and train; SAUG's
    resized crop replaces the dataset's padded crop."""
    from lipcert.config import ConfigError

    cfg = apply_overrides(load_preset("cifar10-linf-lenet-ensemble"),
                          [f"data.augment={strength}", "data.padding=null", "train.epochs=1", "train.batch_size=16",
                           "eval.attack.steps=1"])
    cfg.model = _shrink(cfg.model)
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=lambda s: None)
    aug = trainer.augmenter
    assert aug.jitter == (0.4, 0.4, 0.4, 0.1) and aug.jitter_p == 0.8 and aug.grayscale_p == 0.2 and aug.hflip
    assert aug.resized_crop == (strength == "saug") and aug.padding == (0 if strength == "saug" else 3)
    results = trainer.fit()
    assert results["n"] == N and 0.0 <= results["clean_accuracy"] <= 1.0
    if strength == "saug":
        with pytest.raises((ConfigError, ValueError), match="padding"):
            Trainer(apply_overrides(cfg, ["data.padding=4"]), tmp_path / "bad", device="cpu", progress=False,
                    log=lambda s: None)
