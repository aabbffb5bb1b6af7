"""Options are matched by full name only, and options without effect are said to be ignored."""

from __future__ import annotations

import argparse

import pytest

from lipcert.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "lipcert"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_no_parser_accepts_abbreviations():
    found = dict(_parsers(build_parser()))
    assert {"lipcert", "lipcert train", "lipcert certify", "lipcert report"} <= set(found)
    assert [n for n, p in found.items() if p.allow_abbrev] == []


@pytest.mark.parametrize("argv", [
    ["certify", "m.pt", "--eps", "0.1", "--lim", "5"],           # was --limit
    ["certify", "m.pt", "--eps", "0.1", "--batch", "5"],         # was --batch-size
    ["train", "--preset", "digits-linf", "--data-d", "/x"],       # was --data-dir
    ["separation", "--dataset", "digits", "--no-t"],             # was --no-test
])
def test_a_prefix_of_an_option_is_an_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_data_dir_for_an_embedded_dataset_is_said_to_be_ignored(capsys, tmp_path):
    assert main(["separation", "--dataset", "digits", "--subset", "30", "--no-test", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"--data-dir {tmp_path} ignored: digits ships with the install" in err
    assert main(["separation", "--dataset", "digits", "--subset", "30", "--no-test"]) == 0
    assert "ignored" not in capsys.readouterr().err


def test_options_without_effect_are_reported(tmp_path, capsys):
    from lipcert import models
    from lipcert.checkpoint import model_payload, save_atomic

    net = models.build("linf_mlp", in_shape=[1, 8, 8], num_classes=10, width=16, depth=2, mean=[0.3], std=0.4).eval()
    save_atomic(model_payload(net, kind="model", config={"data": {"name": "digits"}}), tmp_path / "model.pt")
    assert main(["certify", str(tmp_path / "model.pt"), "--eps", "0.01", "--limit", "10", "--raw"]) == 0
    assert "--raw ignored" in capsys.readouterr().err
    assert main(["certify", str(tmp_path / "model.pt"), "--eps", "0.01", "--limit", "10"]) == 0
    assert "ignored" not in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope"), "--lipschitz-p", "8"]) == 2
    assert "--lipschitz-p ignored" in capsys.readouterr().err
