"""Radii in configs: fractions in YAML and --set, pixel-unit radii warned about at training start,
the eval.attack spec checked when the config is loaded."""

from __future__ import annotations

import pytest

from lipcert.certify.radii import model_norm, parse_radius, radius_problem
from lipcert.config import ConfigError, apply_overrides, from_dict, load_preset
from tests.conftest import tiny_linf_net


def test_fractions_in_yaml_and_overrides(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("base: mnist5k-linf\neval:\n  eps: [2/255, 8/255]\ntrain:\n  schedule:\n    eps: {kind: ramp, start: 0, end: 8.8/255, t0: 0, t1: 5}\n")
    cfg = load_preset(str(p))
    assert cfg.eval.eps == pytest.approx([2 / 255, 8 / 255])
    assert cfg.train.schedule["eps"]["end"] == pytest.approx(8.8 / 255)
    cfg = apply_overrides(cfg, ["eval.eps=[36/255]"])
    assert cfg.eval.eps == pytest.approx([36 / 255])
    assert apply_overrides(cfg, ["eval.eps=1/10"]).eval.eps == pytest.approx([0.1])


def test_string_keys_are_kept_as_written():
    assert from_dict({"data": {"name": "mnist5k", "data_dir": "8/255"}}).data.data_dir == "8/255"


def test_bad_attack_spec_fails_at_load():
    with pytest.raises(ConfigError, match="eval.attack: unknown attack 'pgdd'"):
        from_dict({"eval": {"attack": {"name": "pgdd"}}})
    assert from_dict({}).eval.attack["name"] == "strong"  # the documented default
    assert from_dict({"eval": {"attack": None}}).eval.attack is None


def test_radius_problem_is_norm_aware():
    import torch

    x = torch.rand(4, 1, 8, 8)
    assert "did you mean 8/255 = 0.0314?" in radius_problem(8.0, "linf", x)
    assert radius_problem(1.0, "linf", x) is None and radius_problem(0.3, "linf", x) is None
    assert radius_problem(1.58, "l2", x) is None  # l2 radii above 1 are ordinary
    assert "sqrt(64)" in radius_problem(9.0, "l2", x)
    assert radius_problem(8.0, "linf", x * 255) is None  # not [0, 1] data: no scale to judge by
    assert model_norm(tiny_linf_net()) == "linf" and parse_radius("3/4") == 0.75


def test_training_warns_about_pixel_unit_radii(tmp_path):
    from lipcert.train import Trainer

    cfg = apply_overrides(load_preset("digits-linf"), ["eval.eps=[8, 0.1]", "train.epochs=1", "model.width=8"])
    logs: list[str] = []
    Trainer(cfg, tmp_path / "run", device="cpu", progress=False, log=logs.append)
    assert any("warning: eval.eps 8" in line and "8/255" in line for line in logs)
