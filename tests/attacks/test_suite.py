"""The worst-case attack suite (lipcert/attacks/suite.py) and what the evaluation makes of it."""

from __future__ import annotations

import pytest
import torch

from lipcert.attacks import apgd, attack_names, describe, pgd, run_attacks
from lipcert import certify
from lipcert.certify import evaluate_samples, evaluation_summary, format_results


def test_names_aliases_and_errors():
    assert attack_names({"name": "strong"}) == ["pgd", "apgd-ce", "apgd-t"]
    assert attack_names({"name": "apgd"}) == ["apgd-ce", "apgd-t"]
    assert attack_names({"name": ["pgd", "APGD-T", "pgd"]}) == ["pgd", "apgd-t"]
    assert describe({"name": "pgd+apgd-dlr"}) == "pgd+apgd-dlr"
    assert attack_names({}) == ["pgd", "apgd-ce", "apgd-t"]  # the default
    with pytest.raises(ValueError, match="unknown attack 'fgsm'.*strong"):
        attack_names({"name": "fgsm"})
    with pytest.raises(ValueError, match="unknown attack setting.*apgd_step"):
        attack_names({"name": "apgd", "apgd_step": 3})
    with pytest.raises(ValueError, match="apgd_targets must be an integer >= 1"):
        attack_names({"name": "apgd", "apgd_targets": 0})


def test_worst_case_is_at_least_every_attack_and_stages_shrink(trained_linf_net):
    net, x, y = trained_linf_net
    eps = 0.15
    spec = {"name": "strong", "steps": 10, "apgd_steps": 15, "apgd_targets": 2}
    lines: list[str] = []
    res = run_attacks(net, x, y, eps, spec=spec, progress=lines.append)
    assert list(res.stages) == ["pgd", "apgd-ce", "apgd-t"] and len(lines) == 3
    assert lines[0].startswith("PGD at eps 0.15 (10 steps)") and lines[2].startswith("APGD-T at eps 0.15 (15 steps, 2 targets, on the")
    masks = list(res.stages.values())
    for before, after in zip(masks, masks[1:]):
        assert not (after & ~before).any()  # a sample broken once stays broken
    assert torch.equal(res.robust, masks[-1])
    # PGD ran first on every sample with the same seed: exactly PGD alone
    assert torch.equal(res.stages["pgd"], pgd(net, x, y, eps, steps=10).robust)
    # the worst case is no weaker than an attack alone, and the broken x_adv really are misclassified
    assert res.robust.sum() <= apgd(net, x, y, eps, loss="dlr-targeted", steps=15, targets=2, seed=2).robust.sum() + 2
    broken = ~res.robust & (net(x).argmax(1) == y)
    assert broken.any()
    with torch.no_grad():
        assert (net(res.x_adv[broken]).argmax(1) != y[broken]).all()
    assert ((res.x_adv - x).flatten(1).abs().amax(1) <= eps * (1 + 1e-6) + 1e-6).all()


def test_evaluation_reports_the_worst_case_and_pgd_alone(trained_linf_net):
    net, x, y = trained_linf_net
    lines: list[str] = []
    spec = {"name": "strong", "steps": 10, "apgd_steps": 15, "apgd_targets": 2}
    ev = evaluate_samples(net, x, y, [0.1, 0.2], spec, progress=lines.append)
    res = evaluation_summary(ev, [0.1, 0.2])
    assert res["attack"] == "pgd+apgd-ce+apgd-t"
    assert [line.split(" (")[0] for line in lines[2:]] == [f"{a} at eps {e}" for e in (0.1, 0.2) for a in ("PGD", "APGD-CE", "APGD-T")]
    for key in ("0.1", "0.2"):
        e = res["eps"][key]
        assert e["certified_accuracy"] <= e["attack_accuracy"] <= e["pgd_accuracy"] <= res["clean_accuracy"]
        assert e["attack_accuracy_by"]["apgd-t"] == e["attack_accuracy"] and e["attack_accuracy_by"]["pgd"] == e["pgd_accuracy"]
        assert e["soundness_violations"] == 0
    assert res["eps"]["0.2"]["attack_accuracy"] < res["eps"]["0.2"]["pgd_accuracy"]  # APGD added something
    table = format_results(res)
    assert "attacked" in table and "pgd+apgd-ce+apgd-t" in table
    # an attack spec without PGD: no pgd_accuracy key
    only = evaluation_summary(evaluate_samples(net, x[:40], y[:40], [0.1], {"name": "apgd-ce", "apgd_steps": 5}), [0.1])
    assert "pgd_accuracy" not in only["eps"]["0.1"] and "attack_accuracy" in only["eps"]["0.1"]


def test_soundness_violations_count_samples_any_attack_broke(trained_linf_net):
    net, x, y = trained_linf_net
    ev = evaluate_samples(net, x, y, [0.2], {"name": "pgd", "steps": 5})
    ev.robust[0.2] = torch.zeros_like(ev.robust[0.2])  # pretend a later attack broke everything
    logs: list[str] = []
    res = evaluation_summary(ev, [0.2], log=logs.append)
    assert res["eps"]["0.2"]["soundness_violations"] == int(ev.cert.certified(0.2).sum()) > 0
    assert "SOUNDNESS VIOLATION" in logs[0]


def test_bad_spec_fails_before_any_work(trained_linf_net):
    net, x, y = trained_linf_net
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate_samples(net, x, y, [0.1], {"name": "pgdd"})


def test_certified_samples_get_the_audit(trained_linf_net):
    net, x, y = trained_linf_net
    eps = 0.2
    everything = torch.ones(len(y), dtype=torch.bool)  # pretend all are certified
    spec = {"name": "strong", "steps": 5, "apgd_steps": 15, "apgd_targets": 2}
    lines: list[str] = []
    none = run_attacks(net, x, y, eps, spec={**spec, "audit_steps": 0}, certified=everything, progress=lines.append)
    assert torch.equal(none.robust, none.stages["pgd"])  # APGD left the certified samples alone
    assert "certified: 0-step audit" in lines[1]
    short = run_attacks(net, x, y, eps, spec={**spec, "audit_steps": 5}, certified=everything).robust
    full = run_attacks(net, x, y, eps, spec={**spec, "audit_steps": None}, certified=everything).robust
    plain = run_attacks(net, x, y, eps, spec=spec).robust  # no certificate given: full settings for all
    assert torch.equal(full, plain)
    assert short.sum() <= none.robust.sum() and full.sum() < none.robust.sum()
    assert full.sum() <= short.sum() + 2  # the full budget is (nearly always) stronger than the audit


def test_smooth_gradient_keeps_the_values_and_smooths_the_gradient(trained_linf_net):
    from lipcert.attacks.surrogate import SmoothGradient, smooth_gradient
    from lipcert.nn import set_p

    net, x, y = trained_linf_net
    sg = SmoothGradient(net, 8.0)
    xs = x[:20].clone().requires_grad_(True)
    z = sg(xs)
    assert torch.equal(z.detach(), net(x[:20]).detach())  # exactly the model's logits
    (g,) = torch.autograd.grad(z[:, 0].sum(), xs)
    relaxed = __import__("copy").deepcopy(net)
    set_p(relaxed, 8.0)
    xr = x[:20].clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(relaxed(xr)[:, 0].sum(), xr)
    torch.testing.assert_close(g, gr)
    xi = x[:20].clone().requires_grad_(True)
    (gi,) = torch.autograd.grad(net(xi)[:, 0].sum(), xi)
    assert (g != 0).sum() > 3 * (gi != 0).sum()  # dense where the p = inf gradient is sparse
    assert smooth_gradient(net, None) is net
    assert smooth_gradient(torch.nn.Linear(3, 2), 8.0).__class__ is torch.nn.Linear


def test_worst_case_never_breaks_a_certified_sample_inside_its_radius(trained_linf_net):
    """The full default suite (surrogate gradients included), at 0.999x each sample's radius."""
    net, x, y = trained_linf_net
    cert = certify.margin(net, x, y)
    ok = cert.radius > 0
    xs, ys, radii = x[ok], y[ok], cert.radius[ok].double()
    for r in torch.quantile(radii, torch.tensor([0.1, 0.5, 0.9], dtype=radii.dtype)).tolist():
        sel = radii >= r
        res = run_attacks(net, xs[sel], ys[sel], 0.999 * r, spec={"name": "strong", "audit_steps": None})
        assert res.robust.all(), f"the attack suite broke a sample certified at radius >= {r}"
