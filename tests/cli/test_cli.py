"""The command line: train -> certify -> report on digits, and clear errors for user mistakes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from lipcert.cli import main

FAST = ["--set", "train.epochs=2", "--set", "model.width=32", "--set", "train.batch_size=256", "--set", "eval.attack.steps=2",
        "--set", "train.schedule.p.e1=1", "--set", "train.schedule.p.e2=0.5", "--set", "train.schedule.lam.e1=1",
        "--set", "train.schedule.lam.e2=0.5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "digits-linf", "--out", str(out), "--no-progress", "--device", "cpu", *FAST]) == 0
    return out


def test_train_certify_report(run_dir, tmp_path, capsys):
    assert (run_dir / "results.json").exists() and (run_dir / "model.pt").exists()
    js, radii = tmp_path / "r.json", tmp_path / "radii.csv"
    code = main(["certify", str(run_dir / "model.pt"), "--eps", "0.05", "0.1", "--attack", "pgd", "--steps", "3",
                 "--json", str(js), "--radii", str(radii)])
    assert code == 0
    res = json.loads(js.read_text())
    assert res["dataset"] == "digits" and res["norm"] == "linf" and set(res["eps"]) == {"0.05", "0.1"}
    train_res = json.loads((run_dir / "results.json").read_text())
    # exact: same weights, same certifier; at p = inf the net is max / elementwise ops (batch-free)
    assert res["eps"]["0.1"]["certified_accuracy"] == train_res["eps"]["0.1"]["certified_accuracy"]
    rows = list(csv.DictReader(radii.open()))
    assert len(rows) == res["n"] and [int(r["index"]) for r in rows[:3]] == [0, 1, 2]
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "certified_vs_radius.png").stat().st_size > 1000
    assert (run_dir / "training_curves.png").exists()
    assert "| 0.1 |" in (run_dir / "report.md").read_text()


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lipcert", "presets"], capture_output=True, text=True, check=True)
    assert "mnist5k-linf" in out.stdout and "cifar10-linf-boost-8" in out.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--preset", "mnist-linf-boost-0.3", "--data-dir", "/nonexistent/dir"], "nonexistent"),
        (["train", "--preset", "no-such-preset"], "unknown preset"),
        (["train", "--preset", "digits-linf", "--set", "train.epochs"], "section.key=value"),
        (["certify", "/nonexistent/model.pt", "--eps", "0.1"], "does not exist"),
        (["report", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_is_clear(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run_dir / "model.pt").read_bytes()[:1000])
    assert main(["certify", str(bad), "--eps", "0.1"]) == 2
    assert "truncated" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["certify", "m.pt", "--eps", "-0.1"], "a radius must be a number >= 0"),
        (["certify", "m.pt", "--eps", "nan"], "a radius must be a number >= 0"),
        (["certify", "m.pt", "--eps", "0.1", "--limit", "0"], "must be an integer >= 1"),
        (["certify", "m.pt", "--eps", "0.1", "--batch-size", "0"], "must be an integer >= 1"),
        (["ensemble", "a.pt", "b.pt", "--eps", "-0.1"], "a radius must be a number >= 0"),
        (["bounds", "m.pt", "--eps", "-1"], "a radius must be a number >= 0"),
        (["separation", "--dataset", "digits", "--subset", "0"], "must be an integer >= 1"),
    ],
)
def test_bad_numbers_are_usage_errors(argv, message, capsys):
    """--eps -0.1 printed certified accuracy 1.0 (misclassified samples counted); --limit 0 meant no
    limit; --batch-size 0 failed with 'range() arg 3 must not be zero'."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--set", "train.epochs=two"], "train.epochs must be an integer, got 'two'"),
        (["--set", "train.batch_size=0"], "train.batch_size must be >= 1"),
        (["--set", "optim.lr=abc"], "optim.lr must be a number"),
    ],
)
def test_train_wrong_override_values_are_clear(argv, message, capsys, tmp_path):
    """Wrong types used to surface as TypeError / ZeroDivisionError tracebacks from the training loop."""
    assert main(["train", "--preset", "digits-linf", "--out", str(tmp_path / "run"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_numeric_data_dir_stays_a_path(capsys, tmp_path, monkeypatch):
    """--data-dir 2024 went through YAML and became the integer 2024."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "mnist-linf-2021", "--data-dir", "2024", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert "data directory 2024 does not exist" in err and "Traceback" not in err


def test_bounds_on_linf_model_says_what_to_use(run_dir, capsys):
    """Was only 'LinfDistNet supports none of the registered bounds (...)'."""
    assert main(["bounds", str(run_dir / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "l2 Lipschitz bounds" in err and "lipcert certify" in err


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_ctrl_c_during_training_says_how_to_resume(epochs_done, capsys, tmp_path, monkeypatch):
    """Ctrl-C printed only 'lipcert: interrupted'."""
    import lipcert.train

    def fake_train(cfg, out, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        if epochs_done:
            (out / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(lipcert.train, "train", fake_train)
    assert main(["train", "--preset", "digits-linf", "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    if epochs_done:
        assert "last.pt" in err and "--resume" in err
    else:
        assert "nothing to resume" in err


def test_unwritable_outputs_fail_before_any_work(run_dir, tmp_path, capsys):
    """--json into a missing folder failed with [Errno 2] only after the whole certification."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for argv in (["certify", str(run_dir / "model.pt"), "--eps", "0.1", "--json", str(tmp_path / "no" / "r.json")],
                 ["certify", str(run_dir / "model.pt"), "--eps", "0.1", "--radii", str(blocker / "r.csv")],
                 ["certify", str(run_dir / "model.pt"), "--eps", "0.1", "--radii", str(tmp_path)],
                 ["ensemble", str(run_dir / "model.pt"), "--eps", "0.1", "--json", str(tmp_path / "no" / "e.json")],
                 ["separation", "--dataset", "digits", "--json", str(tmp_path / "no" / "s.json")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        out, err = capsys.readouterr()
        assert "clean accuracy" not in out and ("does not exist" in err or "not a directory" in err or "is a directory" in err)
    code = main(["train", "--preset", "digits-linf", "--out", str(blocker / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the run directory" in err and "choose another --out" in err


def test_every_option_of_every_subcommand_has_help():
    """certify / ensemble / bounds listed --split, --batch-size and --device without a word."""
    import argparse

    from lipcert.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_seeds_resume_starts_seeds_an_interruption_never_reached(tmp_path, capsys, monkeypatch):
    """Ctrl-C in seed 1's first epoch: `--seeds 0 1 --resume` failed with 'no last.pt in OUT/seed-1'."""
    import lipcert.train

    calls = []

    def fake_train(cfg, out, resume, **kwargs):
        calls.append((out.name, resume))

    monkeypatch.setattr(lipcert.train, "train", fake_train)
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "last.pt").write_bytes(b"")
    (tmp_path / "seed-1").mkdir()  # interrupted before its first checkpoint
    argv = ["train", "--preset", "digits-linf", "--out", str(tmp_path), "--seeds", "0", "1", "--resume", "--no-progress"]
    assert main(argv) == 0
    assert calls == [("seed-0", True), ("seed-1", False)]
    assert "seed 1 has no last.pt yet; starting it" in capsys.readouterr().out
    calls.clear()
    assert main([*argv[:4], str(tmp_path / "elsewhere"), *argv[5:]]) == 0
    assert calls == [("seed-0", True), ("seed-1", True)]  # nothing started anywhere: train() reports the error


def test_certify_progress_goes_to_stderr(run_dir, capsys):
    assert main(["certify", str(run_dir / "model.pt"), "--eps", "0.1", "--attack", "pgd", "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert "certifying" in err and "PGD at eps 0.1" in err and "certifying" not in out


def test_certify_and_ensemble_share_their_common_options():
    """ensemble had no --step-size although certify had one."""
    import argparse

    from lipcert.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    opts = {name: {o for a in sub.choices[name]._actions for o in a.option_strings} for name in ("certify", "ensemble")}
    only_certify = opts["certify"] - opts["ensemble"]
    # l2-only options, per-sample radii, and your own (l2) model
    assert only_certify == {"--norm", "--bound", "--l2-form", "--radii", "--model-factory", "--weights"}
    assert opts["ensemble"] - opts["certify"] == {"--combine"}  # certify had no --raw; --combine: mean or vote


def test_training_state_at_finite_p_needs_p_inf(tmp_path, capsys):
    """certify last.pt of a run still in its l_p phase told a CLI user to call lipcert.nn.set_p()."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "digits-linf", "--out", str(out), "--no-progress", "--set", "train.epochs=1",
                 "--set", "model.width=16", "--set", "eval.attack=null"]) == 0  # p schedule: still p = 8 after epoch 1
    capsys.readouterr()
    for cmd in (["certify", str(out / "last.pt")], ["ensemble", str(out / "last.pt"), str(out / "model.pt")]):
        assert main([*cmd, "--eps", "0.05"]) == 2
        err = capsys.readouterr().err
        assert "p = 8" in err and "--p-inf" in err and "set_p" not in err
    js1, js2 = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["certify", str(out / "last.pt"), "--eps", "0.05", "--p-inf", "--json", str(js1)]) == 0
    assert main(["certify", str(out / "model.pt"), "--eps", "0.05", "--json", str(js2)]) == 0
    assert json.loads(js1.read_text())["eps"] == json.loads(js2.read_text())["eps"]  # model.pt is last.pt at p = inf
