"""Presets load, overrides apply, typos are errors that name the valid keys."""

from __future__ import annotations

import math

import pytest

from lipcert.config import ConfigError, apply_overrides, differences, dump, from_dict, load_preset, preset_names


def test_every_preset_loads_and_round_trips():
    import yaml

    names = preset_names()
    assert {"mnist5k-linf", "digits-linf", "mnist-linf-2021", "fashion-mnist-linf-2021", "mnist-linf-boost-0.1",
            "mnist-linf-boost-0.3", "cifar10-linf-boost-2", "cifar10-linf-boost-8", "cifar10-linf-boost-16"} <= set(names)
    for name in names:
        cfg = load_preset(name)
        assert cfg.preset == name and cfg.description
        again = from_dict(yaml.safe_load(dump(cfg)))
        assert differences(again.to_dict(), cfg.to_dict(), ignore=set()) == []


def test_overrides_and_errors():
    cfg = load_preset("digits-linf")
    cfg2 = apply_overrides(cfg, ["train.epochs=3", "model.width=16", "train.schedule.p.final=inf", "optim.eps=1e-8"])
    assert cfg2.train.epochs == 3 and cfg2.model["width"] == 16 and cfg2.train.schedule["p"]["final"] == math.inf
    assert cfg2.optim.eps == 1e-8
    with pytest.raises(ConfigError, match="valid keys"):
        apply_overrides(cfg, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(cfg, ["train.epochs"])
    with pytest.raises(ConfigError, match="unknown config section"):
        apply_overrides(cfg, ["nope.x=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("no-such-preset")


def test_differences_names_keys():
    a = load_preset("digits-linf").to_dict()
    b = apply_overrides(load_preset("digits-linf"), ["train.seed=5", "data.data_dir=/x"]).to_dict()
    diff = differences(a, b)
    assert diff == ["train.seed: 0 != 5"]  # data_dir is a runtime key
