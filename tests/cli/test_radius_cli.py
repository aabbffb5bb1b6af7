"""Radii on the command line: fractions (``--eps 2/255 8/255``), and a radius meant in pixel units
(``--eps 8``) refused with a hint unless --allow-large-eps; ``--attack`` picks the attacks."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from lipcert import checkpoint
from lipcert.cli import main
from lipcert.cli.argtypes import radius
from tests.conftest import tiny_linf_net


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """An untrained l-inf-dist net of the digits shape, saved as model.pt (no training needed)."""
    net = tiny_linf_net(width=16, depth=2, in_shape=(1, 8, 8), num_classes=10).eval()
    path = tmp_path_factory.mktemp("m") / "model.pt"
    checkpoint.save_atomic(checkpoint.model_payload(net, kind="model", config={"data": {"name": "digits"}}), path)
    return path


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), (" 36 / 255 ", 36 / 255), ("0.5/2", 0.25), ("1e-1", 0.1),
                                        ("inf", math.inf), ("0", 0.0)])
def test_radius_parses_numbers_and_fractions(text, value):
    assert radius(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["8/0", "8/", "a/255", "8//255", "-8/255"])
def test_radius_rejects_bad_fractions(text):
    with pytest.raises(argparse.ArgumentTypeError):
        radius(text)


def test_fractions_reach_the_results(digits_model, tmp_path):
    js = tmp_path / "r.json"
    assert main(["certify", str(digits_model), "--eps", "2/255", "8/255", "--limit", "20", "--json", str(js)]) == 0
    assert set(json.loads(js.read_text())["eps"]) == {"0.00784314", "0.0313725"}


def test_pixel_unit_radius_is_refused_with_a_hint(digits_model, capsys):
    assert main(["certify", str(digits_model), "--eps", "0.1", "8", "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 8/255 = 0.0314?" in err and "--allow-large-eps" in err and "Traceback" not in err


def test_allow_large_eps_evaluates_with_a_warning(digits_model, tmp_path, capsys):
    js = tmp_path / "r.json"
    assert main(["certify", str(digits_model), "--eps", "8", "--limit", "20", "--allow-large-eps", "--json", str(js)]) == 0
    assert "warning: --eps 8" in capsys.readouterr().err
    assert json.loads(js.read_text())["eps"]["8"]["certified_accuracy"] == 0.0


@pytest.mark.parametrize("argv,attack", [(["--attack"], "pgd+apgd-ce+apgd-t"), (["--attack", "pgd"], "pgd"),
                                         (["--attack", "apgd-t", "pgd"], "apgd-t+pgd"), (["--attack", "none"], None)])
def test_attack_option(digits_model, tmp_path, argv, attack):
    js = tmp_path / "r.json"
    assert main(["certify", str(digits_model), "--eps", "0.05", "--limit", "20", "--steps", "2", "--apgd-steps", "3",
                 "--json", str(js), *argv]) == 0
    res = json.loads(js.read_text())
    assert res.get("attack") == attack
    assert ("attack_accuracy" in res["eps"]["0.05"]) == (attack is not None)


def test_unknown_attack_is_one_clear_line(digits_model, capsys):
    assert main(["certify", str(digits_model), "--eps", "0.05", "--attack", "fgsm"]) == 2
    err = capsys.readouterr().err
    assert "--attack: unknown attack 'fgsm'" in err and "Traceback" not in err
