"""EMA of weights (EMAReport §2.3): update rule with warm-up, recalibration of mean-shift running means,
and the loop evaluating / checkpointing the (recalibrated) EMA model."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lipcert
from lipcert import checkpoint, models
from lipcert.config import apply_overrides, load_preset
from lipcert.nn import MeanShiftNorm, set_p
from lipcert.train import Trainer
from lipcert.train.ema import EMA, recalibrate
from tests.linf_family_helpers import blobs


def _net(seed=0):
    torch.manual_seed(seed)
    return models.build("linf_mlp", in_shape=[1, 6, 6], num_classes=4, width=16, depth=3, mean=[0.5], std=0.25)


def test_update_rule_with_warmup_averages_weights_and_buffers():
    a, b = _net(0), _net(1)
    for m in b.modules():
        if isinstance(m, MeanShiftNorm):
            m.running_mean.normal_()
    ema = EMA(a, decay=0.99, warmup=True)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    ema.update(b)  # decay min(0.99, 1/10) = 0.1
    for (k, v), w in zip(ema.model.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, 0.1 * start[k] + 0.9 * w)
    assert ema.current_decay() == pytest.approx(2 / 11)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.99
    assert EMA(a, 0.9, warmup=False).current_decay() == 0.9
    assert not any(p.requires_grad for p in ema.model.parameters())


def _train_mode_batch_means(model, x):
    """Batch means each mean-shift layer sees in one train-mode pass over x (no running-mean update)."""
    means = []
    hooks = [m.register_forward_hook(lambda m, i, o: means.append(i[0].mean(0).detach())) for m in model.modules() if isinstance(m, MeanShiftNorm)]
    saved = [m.running_mean.clone() for m in model.modules() if isinstance(m, MeanShiftNorm)]
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m, s in zip([m for m in model.modules() if isinstance(m, MeanShiftNorm)], saved):
        m.running_mean.copy_(s)
    return means


def test_recalibrate_sets_exact_sample_weighted_average_of_batch_means():
    net = _net(2)
    x, _ = blobs(70)
    weights = [p.detach().clone() for p in net.parameters()]
    recalibrate(net, x, batch_size=32)  # batches of 32, 32, 6
    norms = [m for m in net.modules() if isinstance(m, MeanShiftNorm)]
    assert not net.training and all(m.momentum == 0.1 for m in norms)
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
    per_batch = [_train_mode_batch_means(net, x[s : s + 32]) for s in range(0, 70, 32)]
    sizes = [32, 32, 6]
    for k, m in enumerate(norms):
        expected = sum(n * means[k] for n, means in zip(sizes, per_batch)) / 70
        torch.testing.assert_close(m.running_mean, expected, rtol=1e-5, atol=1e-5)
    # one batch holding everything: the first layer's running mean is the plain data mean of its input
    recalibrate(net, x, batch_size=1000)
    h = net[2](net[1](net[0](x)))
    torch.testing.assert_close(norms[0].running_mean, h.mean(0), rtol=1e-5, atol=1e-5)


DIGITS_FAST = ["train.epochs=3", "model.width=32", "train.batch_size=256", "eval.attack.steps=2",
               "train.schedule.p.e1=1", "train.schedule.p.e2=1", "train.schedule.lam.e1=1", "train.schedule.lam.e2=1"]


@pytest.mark.parametrize("recal", [False, True])
def test_loop_evaluates_and_checkpoints_the_ema_model(tmp_path, recal):
    cfg = apply_overrides(load_preset("digits-linf"), DIGITS_FAST + ["train.ema_decay=0.9", f"train.ema_recalibrate={recal}"])
    trainer = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None)
    results = trainer.fit()
    final = lipcert.load(tmp_path / "model.pt")
    state = checkpoint.read(tmp_path / "last.pt")
    ema = models.build(state["model_spec"]["name"], **state["model_spec"]["kwargs"])
    ema.load_state_dict(state["ema"]["model"])
    raw = models.build(state["model_spec"]["name"], **state["model_spec"]["kwargs"])
    raw.load_state_dict(state["model"])
    # the checkpoint holds the EMA weights, not the raw ones
    for (name, a), b, c in zip(final.named_parameters(), ema.parameters(), raw.parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(b, c) for b, c in zip(ema.parameters(), raw.parameters()))
    means = [m.running_mean for m in final.modules() if isinstance(m, MeanShiftNorm)]
    ema_means = [m.running_mean for m in ema.modules() if isinstance(m, MeanShiftNorm)]
    if recal:
        set_p(ema, math.inf)
        x, _ = lipcert.data.load("digits", "train")
        recalibrate(ema, x, cfg.train.batch_size)
        ema_means = [m.running_mean for m in ema.modules() if isinstance(m, MeanShiftNorm)]
    for a, b in zip(means, ema_means):
        torch.testing.assert_close(a, b)
    # and results.json is the certificate of that model
    x, y = lipcert.data.load("digits", "test")
    cert = lipcert.certify.certify(final, x, y)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    # exact: the same model and certifier; at p = inf only max / elementwise ops (batch-free)
    assert on_disk["eps"]["0.1"]["certified_accuracy"] == cert.certified_accuracy(0.1) == results["eps"]["0.1"]["certified_accuracy"]
