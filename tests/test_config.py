"""Presets load, overrides apply, typos are errors that name the valid keys."""

from __future__ import annotations

import copy
import math
import re

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


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=two", "train.epochs must be an integer, got 'two'"),
        ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
        ("train.seed=1.5", "train.seed must be an integer"),
        ("optim.lr=abc", "optim.lr must be a number, got 'abc'"),
        ("train.ema_decay=high", "train.ema_decay must be a number or null"),
        ("train.ema_warmup=2", "train.ema_warmup must be true or false"),
        ("eval.eps=[0.1,x]", "eval.eps must be a number, got 'x'"),
        ("train.schedule=3", "train.schedule must be a mapping"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.seed=-1", "train.seed must be >= 0"),
        ("eval.eps=[0.1,-0.2]", "eval.eps must be radii >= 0"),
        ("eval.eps=.nan", "eval.eps must be radii >= 0"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(override, message):
    """These failed deep inside training (TypeError, ZeroDivisionError, numpy seeding) or ran silently."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        apply_overrides(load_preset("digits-linf"), [override])


def test_values_are_converted_to_the_field_type():
    cfg = apply_overrides(load_preset("digits-linf"), ["train.epochs=1e1", "optim.lr=1", "eval.eps=0.1", "train.ema_decay=null"])
    assert cfg.train.epochs == 10 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.eval.eps == [0.1]  # a single radius is a one-element list
    assert cfg.train.ema_decay is None


def test_differences_names_keys():
    a = load_preset("digits-linf").to_dict()
    b = apply_overrides(load_preset("digits-linf"), ["train.seed=5", "data.data_dir=/x"]).to_dict()
    diff = differences(a, b)
    assert diff == ["train.seed: 0 != 5"]  # data_dir is a runtime key


def test_config_of_an_older_version_resumes_when_new_keys_keep_their_defaults():
    """A checkpoint's config written before a typed option existed (e.g. data.augment, data.pad_mode)
    equals today's config with that option at its default, and differs from a non-default value."""
    new = load_preset("digits-linf").to_dict()
    old = copy.deepcopy(new)
    for key in ("augment", "pad_mode", "train_fraction", "val_fraction"):
        old["data"].pop(key)
    old["train"].pop("eval_max")
    assert differences(old, new) == []
    changed = apply_overrides(load_preset("digits-linf"), ["data.pad_mode=edge"]).to_dict()
    assert differences(old, changed) == ["data.pad_mode: 'zero' != 'edge'"]


def test_base_presets_merge_nested_keys(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        "data: {name: digits}\nmodel: {name: linf_mlp, width: 64, depth: 3}\n"
        "objective: {name: hinge, theta: 0.3}\n"
        "train: {epochs: 7, batch_size: 32, schedule: {p: {kind: constant, value: 8}, lam: {kind: constant, value: 0.1}}}\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel: {width: 128}\ntrain: {epochs: 9, schedule: {p: {value: 16}}}\n")
    cfg = load_preset(str(child))
    assert cfg.preset == "child"
    assert cfg.model == {"name": "linf_mlp", "width": 128, "depth": 3}
    assert cfg.objective == {"name": "hinge", "theta": 0.3}
    assert cfg.train.epochs == 9 and cfg.train.batch_size == 32
    assert cfg.train.schedule == {"p": {"kind": "constant", "value": 16}, "lam": {"kind": "constant", "value": 0.1}}
    assert "base" not in cfg.to_dict()


def test_base_section_with_another_name_replaces(tmp_path):
    (tmp_path / "a.yaml").write_text("data: {name: digits}\nmodel: {name: linf_mlp, width: 64, depth: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {name: linf_lenet, fc: 32}\n")
    assert load_preset(str(tmp_path / "b.yaml")).model == {"name": "linf_lenet", "fc": 32}
    # the same rule one level down: an ensemble member of another architecture is not merged
    (tmp_path / "c.yaml").write_text("data: {name: digits}\nmodel: {name: linf_ensemble, n: 3, member: {name: linf_mlp, width: 64}}\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\nmodel: {member: {name: linf_lenet}}\n")
    assert load_preset(str(tmp_path / "d.yaml")).model == {"name": "linf_ensemble", "n": 3, "member": {"name": "linf_lenet"}}


def test_base_cycles_and_unknown_bases_are_clear_errors(tmp_path):
    (tmp_path / "x.yaml").write_text("base: y.yaml\ndata: {name: digits}\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_preset(str(tmp_path / "x.yaml"))
    (tmp_path / "z.yaml").write_text("base: no-such-preset\n")
    with pytest.raises(ConfigError, match="unknown preset 'no-such-preset'"):
        load_preset(str(tmp_path / "z.yaml"))


def test_shipped_variants_are_their_base_plus_the_difference():
    quick, ema = load_preset("mnist5k-linf").to_dict(), load_preset("mnist5k-linf-ema").to_dict()
    assert ema["train"].pop("ema_decay") == 0.99 and quick["train"].pop("ema_decay") is None
    for key in ("data", "model", "objective", "optim", "train", "eval"):
        assert ema[key] == quick[key], key


def test_missing_preset_files_and_typos_are_told_apart(tmp_path):
    """A missing YAML file and a typo both said only 'unknown preset ...; available: <34 names>'."""
    with pytest.raises(ConfigError, match="preset file .*my-recipe.yaml does not exist"):
        load_preset(str(tmp_path / "my-recipe.yaml"))
    with pytest.raises(ConfigError, match="did you mean digits-linf"):
        load_preset("digits-linff")
    (tmp_path / "r.yaml").write_text("base: digits-linff\n")
    with pytest.raises(ConfigError, match="unknown preset 'digits-linff' \\(the base of preset 'r'\\); did you mean"):
        load_preset(str(tmp_path / "r.yaml"))


def test_readme_recipe_example_loads(tmp_path):
    """The `base:` example in the README is a working recipe."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert block, "README lost its recipe example"
    (tmp_path / "my-recipe.yaml").write_text(block.group(1))
    cfg = load_preset(str(tmp_path / "my-recipe.yaml"))
    assert cfg.model["width"] == 1024 and cfg.train.epochs == 60
    assert cfg.train.schedule["p"]["e2"] == 45 and cfg.train.schedule["p"]["end"] == 1000


def test_base_schedule_of_another_kind_is_replaced_not_merged():
    """A child preset that sets a schedule of another ``kind`` replaces the base's (no stray keys)."""
    from lipcert.config import load_preset

    cfg = load_preset("mnist-l2-local-4c3f-code")
    assert cfg.train.schedule["lam"] == {"kind": "constant", "value": 1.0}
    assert cfg.optim.lr_schedule == {"kind": "exp_decay", "t0": 175, "t1": 300, "end": 0.005, "stepwise": True}
    assert cfg.train.schedule["eps"]["stepwise"] is True and cfg.train.schedule["eps"]["end"] == 1.75
