"""Schedules reproduce the phase values of Zhang22 Appendix B and the 2021 recipe."""

from __future__ import annotations

import math

import pytest

from lipcert.config import load_preset
from lipcert.train.schedules import Cosine, HoldExpDecay, Phases, Ramp, Step, build_schedule, build_schedules


def test_boost_p_schedule_phases():
    p = Phases(e1=25, e2=375, start=8, end=1000, final=math.inf)
    assert p(0) == 8 and p(24.999) == 8 and p(25) == 8
    assert p(25 + 375 / 2) == pytest.approx(math.sqrt(8 * 1000))  # exponential: geometric midpoint
    assert p(399.999) == pytest.approx(1000, rel=1e-3)
    assert p(400) == math.inf and p(449.9) == math.inf
    # monotone and per-iteration (fractional epochs move it)
    ts = [25 + i * 0.01 for i in range(1000)]
    vals = [p(t) for t in ts]
    assert all(a < b for a, b in zip(vals, vals[1:]))


def test_boost_lambda_schedule_phases():
    lam = Phases(e1=25, e2=375, start=0.05, end=2e-4, final=0.0)
    assert lam(10) == 0.05
    assert lam(25 + 375 * 0.25) == pytest.approx(0.05 * (2e-4 / 0.05) ** 0.25)
    assert lam(400) == 0.0


def test_2021_linear_p_schedule():
    p = Phases(e1=30, e2=170, start=6, end=100, final=100, mode="linear")
    assert p(15) == 6 and p(30 + 85) == pytest.approx(53) and p(210) == 100


def test_other_kinds():
    assert Cosine(total=10)(0) == 1 and Cosine(total=10)(5) == pytest.approx(0.5) and Cosine(total=10)(10) == pytest.approx(0)
    assert Step(milestones=(200,), gamma=0.2)(199) == 1 and Step(milestones=(200,), gamma=0.2)(200) == pytest.approx(0.2)
    assert Ramp(0, 1, 2, 4)(1) == 0 and Ramp(0, 1, 2, 4)(3) == pytest.approx(0.5) and Ramp(0, 1, 2, 4)(9) == 1
    h = HoldExpDecay(t0=10, rate=0.5)
    assert h(10) == 1 and h(12) == pytest.approx(0.25)


def test_build_from_spec_and_errors():
    s = build_schedule({"kind": "phases", "e1": 1, "e2": 2, "start": 8, "end": 1000, "final": "inf"})
    assert s(5) == math.inf
    assert build_schedule(3)(100) == 3
    with pytest.raises(ValueError, match="unknown schedule kind"):
        build_schedule({"kind": "nope"})
    with pytest.raises(ValueError, match="bad fields"):
        build_schedule({"kind": "ramp", "start": 1})
    with pytest.raises(ValueError, match="positive"):
        Phases(e1=0, e2=1, start=0, end=1, final=1)(0.5)


@pytest.mark.parametrize("preset,e1,e2,final_epoch", [("mnist-linf-boost-0.3", 25, 375, 450), ("cifar10-linf-boost-8", 100, 1150, 1300)])
def test_presets_encode_table_3(preset, e1, e2, final_epoch):
    cfg = load_preset(preset)
    sch = build_schedules(cfg.train.schedule)
    assert cfg.train.epochs == final_epoch
    assert sch["p"](0) == 8 and sch["p"](e1 + e2 - 1e-9) == pytest.approx(1000, rel=1e-6) and sch["p"](e1 + e2) == math.inf
    assert sch["lam"](e1 + e2) == 0
    assert cfg.optim.lr == 0.03 and cfg.train.batch_size == 512 and cfg.optim.betas == [0.9, 0.99] and cfg.optim.eps == 1e-10


def authors_lr(epoch: int, lr0: float = 1e-3, least: float = 1e-6, start: int = 25, end: int = 400) -> float:
    """The Fazlyab23 authors' per-epoch exponential decay, stepped like torch's ExponentialLR: the
    multiplicative update happens when the epoch counter reaches ``start`` .. ``end - 1``."""
    gamma = (least / lr0) ** (1 / (end - start))
    lr = lr0
    for counter in range(1, epoch + 1):  # scheduler.step() after each finished epoch
        if start <= counter < end:
            lr = max(lr * gamma, least)
    return lr


def test_exp_decay_stepwise_matches_the_authors_per_epoch_steps():
    s = build_schedule({"kind": "exp_decay", "t0": 25, "t1": 400, "end": 1e-3, "stepwise": True})
    for epoch in (0, 10, 24, 25, 26, 100, 250, 398, 399, 400, 450):
        for frac in (0.0, 0.5, 0.99):
            assert math.isclose(1e-3 * s(epoch + frac), authors_lr(epoch), rel_tol=1e-9), (epoch, frac)
    assert s(24.99) == 1.0 and math.isclose(1e-3 * s(399.5), 1e-6, rel_tol=1e-12)


def test_exp_decay_smooth_is_geometric_between_t0_and_t1():
    s = build_schedule({"kind": "exp_decay", "t0": 200, "t1": 400, "end": 1e-3})
    assert s(0) == 1.0 and s(200) == 1.0 and s(400) == 1e-3 and s(500) == 1e-3
    assert math.isclose(s(300), 1e-3**0.5, rel_tol=1e-12)
    for t in (210.0, 250.5, 333.3):  # constant ratio per epoch
        assert math.isclose(s(t + 1) / s(t), (1e-3) ** (1 / 200), rel_tol=1e-9)
    with pytest.raises(ValueError, match="t1 > t0"):
        build_schedule({"kind": "exp_decay", "t0": 10, "t1": 10, "end": 0.1})


def test_stepwise_ramp_is_the_huang21_codes_linspace_per_epoch():
    """Huang21 code: epoch t (warmup <= t < warmup + n) trains at np.linspace(start, end, n)[t - warmup]."""
    start, end, warmup, n = 0.0, 0.1551, 20, 400
    ramp = build_schedule({"kind": "ramp", "start": start, "end": end, "t0": warmup, "t1": warmup + n, "stepwise": True})
    ref = [start + (end - start) * i / (n - 1) for i in range(n)]  # np.linspace
    for epoch in (0, 19, 20, 21, 200, 418, 419, 420, 799):
        want = start if epoch < warmup else (ref[epoch - warmup] if epoch < warmup + n else end)
        for frac in (0.0, 0.5, 0.999):  # constant within an epoch
            assert ramp(epoch + frac) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_code_lr_schedule_matches_huang21_lr_exp():
    """Huang21 code ``lr_exp``: epoch e >= T/2 + 25 trains at (end / start)^((e - (T/2 + 24)) / (T/2 - 25))."""
    total, end = 300, 5e-6 / 1e-3
    lr = build_schedule({"kind": "exp_decay", "t0": total // 2 + 25, "t1": total, "end": end, "stepwise": True})
    for e in range(total):
        want = end ** ((e - (total // 2 + 24)) / (total // 2 - 25)) if e >= total // 2 + 25 else 1.0
        assert lr(e + 0.5) == pytest.approx(want, rel=1e-9)


def test_geometric_is_the_authors_lmt_mu_schedule():
    """LMTCrossEntropy.schedulerStep: after epoch k (k = 1, 2, ...) with k > robustStartingEpoch,
    mu <- min(mu * gamma, max); epoch e trains with the value after e steps."""
    from lipcert.train.schedules import build_schedule

    for rse in (0, 3):
        s = build_schedule({"kind": "geometric", "start": 0.001, "rate": 1.03, "cap": 2, "t0": rse})
        mu, seen = 0.001, []
        for epoch in range(400):
            seen.append((epoch, mu))
            k = epoch + 1  # the step at the end of this epoch
            if k > rse:
                mu = min(mu * 1.03, 2)
        for epoch, ref in seen:
            assert abs(s(epoch + 0.5) - ref) <= 1e-12 * ref
        assert s(399) == 2


def test_per_epoch_ramp_is_the_authors_gloro_lambda_schedule():
    """GloRoLoss.schedulerStep (linear): after step k (currentEpoch = k >= robustStartingEpoch),
    lambda = init + (3 - init) / maxEpoch * (k - rse), 3 from k - rse >= maxEpoch."""
    from lipcert.train.schedules import build_schedule

    init, rse, max_epoch = 0.1, 2, 10
    s = build_schedule({"kind": "per_epoch", "of": {"kind": "ramp", "start": init, "end": 3, "t0": rse, "t1": rse + max_epoch}})
    lam = init
    for epoch in range(20):
        for frac in (0.0, 0.4, 0.99):
            assert abs(s(epoch + frac) - lam) <= 1e-12
        k = epoch + 1
        if k >= rse:
            e = k - rse
            lam = init + (3 - init) / max_epoch * e if e < max_epoch else 3


def test_round_below_rounds_only_up_to_the_bound():
    spec = {"kind": "phases", "e1": 5, "e2": 40, "start": 8, "end": 1000, "final": "inf"}
    plain, rounded = build_schedule(spec), build_schedule({**spec, "round_below": 64})
    ts = [i / 62 for i in range(62 * 60)]  # every step of a 60-epoch run, 62 steps an epoch
    seen_int = seen_real = 0
    for t in ts:
        a, b = plain(t), rounded(t)
        if a <= 64:
            assert b == math.floor(a + 0.5) and abs(a - b) <= 0.5, (t, a, b)
            seen_int += 1
        else:
            assert b == a, (t, a, b)  # above the bound (and p = inf) untouched
            seen_real += 1
    assert seen_int > 62 * 5 and seen_real > 62 * 15
    # monotone like the schedule it rounds, and on integers only while <= 64
    vals = [rounded(t) for t in ts]
    assert all(v2 >= v1 for v1, v2 in zip(vals, vals[1:]))
    assert {v for v in vals if v <= 64} <= set(map(float, range(8, 65)))
    assert rounded(100.0) == math.inf


def test_round_below_wraps_any_kind_and_checks_its_bound():
    ramp = build_schedule({"kind": "ramp", "start": 6, "end": 100, "t0": 0, "t1": 10, "round_below": 50})
    assert ramp(0.55) == 11.0 and ramp(9.9) == pytest.approx(6 + 94 * 0.99)
    off = build_schedule({"kind": "ramp", "start": 6, "end": 100, "t0": 0, "t1": 10, "round_below": None})
    assert off(0.55) == pytest.approx(6 + 94 * 0.055)  # null switches a base preset's rounding off
    with pytest.raises(ValueError, match="round_below"):
        build_schedule({"kind": "ramp", "start": 6, "end": 100, "t0": 0, "t1": 10, "round_below": 0})
    with pytest.raises(ValueError, match="round_below"):
        build_schedule({"kind": "ramp", "start": 6, "end": 100, "t0": 0, "t1": 10, "round_below": "x"})


def test_quick_start_rounds_p_to_integers_up_to_64():
    sched = build_schedules(load_preset("mnist5k-linf").train.schedule)["p"]
    assert sched(0.0) == 8.0 and sched(10.3) == math.floor(sched(10.3)) and sched(59.0) == math.inf
    assert 64 < sched(40.0) < 1000 and sched(40.0) != math.floor(sched(40.0))  # above 64: the exact schedule
