"""benchmarks/reproduce_cpu.py: the claim table from seeded runs (fake trainings), and one real tiny run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rep():
    spec = importlib.util.spec_from_file_location("reproduce_cpu", ROOT / "benchmarks" / "reproduce_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_cpu"] = mod
    spec.loader.exec_module(mod)
    return mod


def _fake_cli(calls, cert=lambda run, seed: 50.0 + seed):
    """Stands in for ``lipcert``: writes a results.json per seed (cert = cert(run, seed) %) or a bounds JSON."""
    def cli(argv):
        calls.append(argv)
        if argv[0] == "bounds":
            name, path = argv[argv.index("--bounds") + 1], argv[argv.index("--json") + 1]
            value = 100.0 if "naive" in name else 10.0
            Path(path).write_text(json.dumps({name: value, f"{name}_mean": value}))  # scalar / per-sample keys
            return 0
        out = Path(argv[argv.index("--out") + 1])
        seeds = argv[argv.index("--seeds") + 1:]
        seeds = [int(s) for s in seeds[: next((i for i, s in enumerate(seeds) if s.startswith("--")), len(seeds))]]
        for s in seeds:
            c = cert(out.name, s) / 100
            eps = {e: {"certified_accuracy": c, "pgd_accuracy": c + 0.01, "attack_accuracy": c + 0.005,
                   "soundness_violations": 0} for e in ("0.3", "1.58")}
            (out / f"seed-{s}").mkdir(parents=True)
            (out / f"seed-{s}" / "results.json").write_text(json.dumps({"clean_accuracy": 0.9, "eps": eps,
                                                                        "train_seconds": 10.0 + s}))
        return 0
    return cli


def test_table_has_mean_std_paper_and_verdict(rep, tmp_path):
    calls = []
    better = {"linf": 60.0, "linf-hinge": 40.0}
    cli = _fake_cli(calls, lambda run, seed: better.get(run, 50.0) + 2 * seed)
    assert rep.main(["--claims", "zhang22-loss", "fazlyab23-bounds", "--out", str(tmp_path), "--seeds", "0", "1", "2"], cli) == 0
    text = (tmp_path / "reproduce.md").read_text()
    assert "| mixed loss, certified @0.3 | mnist5k-linf  | 62.00 ± 2.00 | 3 | 40.06" in text  # mean of 60, 62, 64
    assert "42.00 ± 2.00" in text and text.count("Claim holds here.") == 2
    assert "| linf | mnist5k-linf  | 3 | 11 (10-12) |" in text  # training seconds 10, 11, 12
    trained = [a for a in calls if a[0] == "train"]
    # seed-major: every run's seed 0 before any seed 1, one seed per lipcert train
    assert [(a[a.index("--preset") + 1], a[a.index("--seeds") + 1]) for a in trained] == [
        (p, s) for s in "012" for p in ("mnist5k-linf", "mnist5k-linf", "mnist5k-l2-crm")]
    assert "objective.name=hinge" in trained[1] and "objective.theta=0.9" in trained[1]
    bounds = [a for a in calls if a[0] == "bounds"]
    assert len(bounds) == 6 and all(a[a.index("--eps") + 1] == "1.58" for a in bounds)
    # a second invocation reuses the finished runs and bound files: nothing is trained or bounded again
    calls.clear()
    rep.main(["--claims", "zhang22-loss", "fazlyab23-bounds", "--out", str(tmp_path), "--seeds", "0", "1", "2"], cli)
    assert calls == []


def test_a_claim_that_fails_is_reported_and_violations_are_refused(rep, tmp_path):
    cli = _fake_cli([], lambda run, seed: 40.0 if run == "linf" else 60.0)
    rep.main(["--claims", "zhang22-p", "--out", str(tmp_path / "a"), "--quick"], cli)
    assert "Claim does NOT hold here." in (tmp_path / "a" / "reproduce.md").read_text()
    bad = tmp_path / "b" / "seed-0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps({"clean_accuracy": 1, "eps": {"0.3": {
        "certified_accuracy": 1, "pgd_accuracy": 0.5, "soundness_violations": 3}}}))
    with pytest.raises(RuntimeError, match="soundness violations"):
        rep.metric_value("cert@0.3", bad)


def test_table_only_writes_the_finished_seeds_and_names_the_missing(rep, tmp_path):
    cli = _fake_cli([], lambda run, seed: {"l2-local": 30.0, "l2-global": 20.0}.get(run, 40.0) + seed)
    rep.main(["--claims", "huang21", "--out", str(tmp_path), "--seeds", "0", "1"], cli)  # trains l2-global, l2-local
    (tmp_path / "l2-global" / "seed-1" / "results.json").unlink()  # as if seed 1 of l2-global was interrupted
    # and nothing of l2-crm ran
    calls = []
    assert rep.main(["--table-only", "--claims", "huang21", "fazlyab23-crm", "--out", str(tmp_path),
                     "--seeds", "0", "1", "2"], _fake_cli(calls)) == 0
    assert [a for a in calls if a[0] == "train"] == []
    text = (tmp_path / "reproduce.md").read_text()
    assert "| global bound (GloRo), certified @1.58 | mnist5k-l2-global  | 20.00 ± 0.00 | 1 |" in text
    assert "| Local-Lip-G, certified @1.58 | mnist5k-l2-local  | 30.50 ± 0.71 | 2 |" in text
    assert "Claim holds here (on fewer seeds than asked for)." in text
    assert "| CRM + LipLT, certified @1.58 | mnist5k-l2-crm  | not run | 0 |" in text
    assert "Claim not measured" in text
    assert "l2-global seed 1, l2-global seed 2, l2-local seed 2, l2-crm seed 0" in text


def test_a_local_bound_equal_to_the_global_one_up_to_float_noise_is_not_below_it(rep, tmp_path):
    calls = []
    assert rep.main(["--claims", "huang21-bound", "--out", str(tmp_path), "--quick"], _fake_cli(calls)) == 0
    text = (tmp_path / "reproduce.md").read_text()  # the fake writes 10.0 for both bounds
    assert "| local upper bound, mean over images | mnist5k-l2-local  | 10.000 ± 0.000 | 1 |" in text
    assert "Claim does NOT hold here." in text
    assert sorted(a[a.index("--bounds") + 1] for a in calls if a[0] == "bounds") == ["global", "local_upper"]
    claim = next(c for c in rep.CLAIMS if c.key == "huang21-bound")
    assert claim.holds([1.594, 1.589]) and not claim.holds([1.594, 1.594 * (1 - 1e-9)])


def test_quick_and_tiny_overrides_shrink_every_schedule(rep):
    from lipcert.config import apply_overrides, load_preset
    from lipcert.train.schedules import build_schedules

    for run in rep.RUNS.values():
        for mode in ("quick", "tiny"):
            cfg = apply_overrides(load_preset(run.preset), rep.run_overrides(run, mode))
            assert cfg.train.epochs <= 4
            for spec in cfg.train.schedule.values():  # no schedule phase left beyond the last epoch
                assert all(spec[k] <= cfg.train.epochs for k in ("e2", "t1") if k in spec)
            build_schedules(cfg.train.schedule)  # every schedule is still well-formed (linf-pinf: constant p)
    pinf = rep.run_overrides(rep.RUNS["linf-pinf"], "quick")
    assert not any(o.startswith("train.schedule.p.") for o in pinf) and "train.schedule.lam.e2=3" in pinf


def test_one_real_tiny_run(rep, tmp_path, capsys):
    assert rep.main(["--tiny", "--claims", "zhang21", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "linf" / "seed-0" / "results.json").read_text())
    assert res["eps"]["0.3"]["soundness_violations"] == 0
    text = (tmp_path / "reproduce.md").read_text()
    assert "## zhang21" in text and "91.59" in text
