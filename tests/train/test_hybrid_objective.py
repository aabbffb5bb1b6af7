"""The hybrid training objective (Zhang21 code: kappa * CE(worst) + (1 - kappa) * CE) and training
hybrids / joint ensembles through the ordinary loop."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lipcert import models
from lipcert.config import apply_overrides, load_preset
from lipcert.nn import current_p
from lipcert.train import StepContext, Trainer, build_objective
from tests.linf_family_helpers import blobs


def _hybrid():
    torch.manual_seed(0)
    return models.build("linf_mlp_hybrid", in_shape=[1, 6, 6], num_classes=4, width=16, depth=2, head_hidden=8, mean=[0.5], std=0.25)


def test_eps_zero_is_plain_cross_entropy_and_worst_case_is_larger():
    model = _hybrid()
    x, y = blobs(32)
    obj = build_objective({"name": "hybrid", "kappa": 0.9})
    ctx0 = StepContext({"eps": 0.0}, torch.arange(32), 0.0)
    out0 = obj(model, x, y, ctx0)
    torch.testing.assert_close(out0.loss, F.cross_entropy(model(x), y))
    out1 = obj(model, x, y, StepContext({"eps": 0.1}, torch.arange(32), 0.0))
    assert out1.loss > out0.loss
    out1.loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_refuses_non_hybrid_models():
    net = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=8, depth=2)
    x, y = blobs(8)
    with pytest.raises(ValueError, match="hybrid model"):
        build_objective({"name": "hybrid"})(net, x, y, StepContext({"eps": 0.1}, torch.arange(8), 0.0))


FAST = ["train.epochs=2", "train.batch_size=250", "eval.attack.steps=2", "eval.eps=[0.05]", "data.name=synthetic", "train.eval_every=0"]


def test_hybrid_trains_and_certifies_in_the_loop(tmp_path):
    cfg = apply_overrides(load_preset("digits-linf-mlp"), FAST + ["train.epochs=3", "train.schedule.p.e1=1", "train.schedule.p.e2=1",
                                                                "train.schedule.eps.t1=1", "model.width=32", "train.batch_size=100"])
    res = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    assert res["method"] == "hybrid_interval+backbone_interval"  # the best sound certificate
    assert res["eps"]["0.05"]["soundness_violations"] == 0
    assert res["clean_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_joint_ensemble_trains_in_the_loop(tmp_path):
    cfg = apply_overrides(load_preset("digits-linf-ensemble"), FAST + ["model.member.width=16"])
    res = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    assert res["method"] == "ensemble_margin+interval"
    assert res["eps"]["0.05"]["soundness_violations"] == 0
    spec = json.loads(json.dumps(cfg.model))
    assert spec["name"] == "linf_ensemble" and spec["n"] == 3


def test_lse_model_is_certified_at_its_training_p(tmp_path):
    """The per-epoch log of an LSE-relaxed run certifies the net as trained (finite p), not a p = inf copy."""
    cfg = apply_overrides(load_preset("digits-linf-lse"), FAST + ["train.epochs=2", "train.eval_every=1", "model.width=16",
                                                                  "train.schedule.p.e1=5", "train.schedule.p.e2=5"])
    trainer = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None)
    trainer.train_epoch(None)
    assert current_p(trainer.model) == 8.0
    logged = trainer.quick_eval()
    from lipcert.certify import certify

    trainer.model.eval()
    cert = certify(trainer.model, trainer.x_test, trainer.y_test)  # at p = 8: allowed for LSE
    # exact on any one CPU: the kernels sum each output over d in a fixed order whatever the
    # batch it sits in (native: per-(b, n) loop over d; reference: torch's inner-dim reduction)
    assert logged["test_cert@0.05"] == cert.certified_accuracy(0.05) > 0


def test_eval_method_best_in_results_and_reproduced_by_certify_cli(tmp_path, capsys):
    from lipcert.cli import main

    cfg = apply_overrides(load_preset("digits-linf"), FAST + ["model.width=16", "eval.method=best", "train.schedule.p.e1=1",
                                                              "train.schedule.p.e2=0.5", "train.schedule.lam.e1=1",
                                                              "train.schedule.lam.e2=0.5"])
    res = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None).fit()
    assert res["method"] == "linf_margin+interval"
    e = res["eps"]["0.05"]
    assert e["certified_accuracy"] >= e["certified_accuracy_margin"] and e["soundness_violations"] == 0
    js = tmp_path / "c.json"
    assert main(["certify", str(tmp_path / "model.pt"), "--eps", "0.05", "--method", "best", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["eps"]["0.05"]["certified_accuracy"] == e["certified_accuracy"]


def test_joint_ensembles_average_the_members_worst_cases():
    """EMAReport Table 4 trains ensembles of hybrids jointly: the worst case of the averaged logits is the
    average of the members' worst cases (the bound the ensemble certificate averages)."""
    from lipcert.models.linf_ensemble import LinfEnsemble
    from lipcert.nn import set_p
    from lipcert.train.hybrid_objective import _worst

    x, y = blobs(32)
    ctx = StepContext({"eps": 0.05}, torch.arange(32), 0.0)
    obj = build_objective({"name": "hybrid", "kappa": 1.0})
    single = _hybrid()
    torch.testing.assert_close(obj(LinfEnsemble([single]), x, y, ctx).loss, obj(single, x, y, ctx).loss)

    plain = models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=16, depth=2, mean=[0.5], std=0.25)
    mixed = LinfEnsemble([_hybrid(), plain])
    out = obj(mixed, x, y, ctx)
    out.loss.backward()
    assert all(p.grad is not None for p in mixed.parameters() if p.requires_grad)
    # a plain member's bound z_j - z_y + 2 L eps holds at p = inf under any perturbation within eps
    set_p(plain, float("inf"))
    plain.eval()
    with torch.no_grad():
        logits = plain(x)
        bound = _worst(plain, logits, None, y, 0.05)
        for _ in range(20):
            z = plain((x + 0.05 * (2 * torch.rand_like(x) - 1)))
            diff = (z - z.gather(1, y[:, None])).scatter(1, y[:, None], 0.0)
            assert (diff <= bound + 1e-5).all()
