"""build_optimizer: Adam / AdamW take torch's fused kernel where it applies, with the same updates."""

from __future__ import annotations

import pytest
import torch

from lipcert.config import OptimConfig
from lipcert.train.optim import build_optimizer


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(33, 17, generator=g, dtype=dtype).requires_grad_(), torch.randn(17, generator=g, dtype=dtype).requires_grad_()]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_on_cpu_and_same_updates_as_the_loop(name):
    cfg = OptimConfig(name=name, lr=0.03, betas=[0.9, 0.99], eps=1e-10, weight_decay=0.01)
    fused_p, loop_p = _params(), _params()
    opt = build_optimizer([{"params": fused_p}], cfg)
    assert opt.defaults["fused"] is True
    ref = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(loop_p, lr=0.03, betas=(0.9, 0.99), eps=1e-10, weight_decay=0.01, foreach=False)
    g = torch.Generator().manual_seed(1)
    for step in range(20):
        grads = [torch.randn(p.shape, generator=g) for p in fused_p]
        for p, q, gr in zip(fused_p, loop_p, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.param_groups[0]["lr"] = 0.03 * (0.9**step)  # a schedule changing lr, as the trainer does
        ref.param_groups[0]["lr"] = 0.03 * (0.9**step)
        opt.step()
        ref.step()
    for p, q, start in zip(fused_p, loop_p, _params()):
        # 20 steps of size <= lr each: the two orders of rounding stay within a few float32 ulps
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
        assert (p - start).abs().max() > 0.1  # it did move (by far more than the tolerance)


def test_no_fused_kernel_for_meta_parameters():
    cfg = OptimConfig(name="adam", lr=0.1)
    meta = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    opt = build_optimizer([{"params": meta}], cfg)
    assert not opt.defaults.get("fused")


def test_resume_from_a_state_saved_without_fusion():
    cfg = OptimConfig(name="adam", lr=0.01)
    a = _params()
    old = torch.optim.Adam(a, lr=0.01)
    for p in a:
        p.grad = torch.ones_like(p)
    old.step()
    b = [p.detach().clone().requires_grad_() for p in a]
    new = build_optimizer([{"params": b}], cfg)
    new.load_state_dict(old.state_dict())
    for p, q in zip(a, b):
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    old.step()
    new.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
