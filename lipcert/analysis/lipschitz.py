"""Empirical Lipschitz constant by PGD (Zhang22 Appendix C, Eq. 19-20).

For each input x and each output j, PGD maximises ``|g_j(x + delta) - g_j(x)|`` over
``||delta||_inf <= eps`` (20 steps of size eps / 4, from a random start); the estimate at x is the
best value over j divided by eps. It is a *lower bound* of the network's l-inf Lipschitz constant
(a local one, near x) -- an estimate, never a certificate. Zhang22 used it to show that l_p-relaxed
nets are far from 1-Lipschitz (Figure 3: mean 13-21, max > 100 on CIFAR-10 at p = 8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def empirical_lipschitz(
    model: nn.Module, x: Tensor, eps: float = 1.0 / 255, steps: int = 20, step_size: float | None = None,
    batch_size: int = 256, seed: int = 0,
) -> Tensor:
    """Per-sample PGD lower bound of the local l-inf Lipschitz constant (Zhang22 Eq. 19-20).

    The model is evaluated as it is (its mode and p are left alone). Inputs are not clipped to the
    pixel range: the constant is a property of the function on R^d.
    """
    if eps <= 0 or steps < 1:
        raise ValueError(f"need eps > 0 and steps >= 1, got {eps} and {steps}")
    step_size = eps / 4 if step_size is None else step_size
    params = list(model.parameters())
    dtype = params[0].dtype if params else x.dtype
    device = params[0].device if params else x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(device, dtype)
        with torch.no_grad():
            clean = model(xb)
        best = torch.zeros(xb.shape[0], dtype=dtype, device=device)
        for j in range(clean.shape[1]):
            delta = (torch.rand(xb.shape, generator=gen, device=device, dtype=dtype) * 2 - 1) * eps
            for it in range(steps + 1):
                delta.requires_grad_(True)
                gap = (model(xb + delta)[:, j] - clean[:, j]).abs()
                with torch.no_grad():
                    best = torch.maximum(best, gap.detach())
                if it == steps:
                    break
                (grad,) = torch.autograd.grad(gap.sum(), delta)
                with torch.no_grad():
                    delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
        out.append((best / eps).cpu())
    return torch.cat(out)


def lipschitz_section(run_dir, samples: int = 64, ps: list[float] | None = None, verify: bool = True) -> list[str]:
    """Markdown lines for ``lipcert report --lipschitz N``: the empirical constant of the run's final
    model on N test samples at each p in ``ps`` (default: the first p of the run's schedule and
    inf), next to the proven bound (Zhang22 Prop. 4.1: ``d^(L/p) / std`` for the l_p relaxation)."""
    import math
    from pathlib import Path

    from .. import checkpoint, data
    from ..nn import current_p, set_p

    run = Path(run_dir)
    path = run / "model.pt" if (run / "model.pt").is_file() else run / "last.pt"
    payload = checkpoint.read(path, verify=verify)
    cfg = payload.get("config") or {}
    model = checkpoint.load_model(path, verify=verify)
    if current_p(model) is None:
        return ["", "## Empirical Lipschitz constant", "", "(the model has no l_p-distance layers; skipped)"]
    if ps is None:
        p_spec = ((cfg.get("train") or {}).get("schedule") or {}).get("p")
        start = p_spec.get("start") if isinstance(p_spec, dict) else None
        ps = [float(start)] if start is not None and math.isfinite(float(start)) else []
        ps.append(math.inf)
    d = cfg.get("data") or {}
    x, _ = data.load(d.get("name"), (cfg.get("eval") or {}).get("split", "test"), data_dir=d.get("data_dir"),
                     **data.config_options(d))
    x = x[:samples]
    lines = [
        "", "## Empirical Lipschitz constant (Zhang22 App. C)", "",
        f"PGD lower bound of the local l-inf Lipschitz constant of `{path.name}` on {len(x)} samples "
        "(eps = 1/255, 20 steps of eps/4, every output): an estimate, not a proof.", "",
        "| p | mean | median | max | proven bound |", "|---:|---:|---:|---:|---:|",
    ]
    for p in ps:
        set_p(model, p)
        est = empirical_lipschitz(model, x)
        bound = model.linf_lipschitz() if hasattr(model, "linf_lipschitz") else float("nan")
        lines.append(f"| {p:g} | {est.mean():.4g} | {est.median():.4g} | {est.max():.4g} | {bound:.4g} |")
    return lines
