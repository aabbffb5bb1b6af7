"""evaluate_samples: progress lines for long evaluations."""

from __future__ import annotations

import torch

from lipcert.certify import evaluate_samples
from tests.conftest import tiny_linf_net


def test_progress_reports_each_stage():
    """The final certificate and PGD ran silently (minutes on full test sets)."""
    net = tiny_linf_net()
    x, y = torch.rand(8, 1, 6, 6), torch.arange(8) % 4
    lines: list[str] = []
    ev = evaluate_samples(net, x, y, [0.01, 0.02], {"name": "pgd", "steps": 2, "restarts": 1}, progress=lines.append)
    assert lines[0] == "certifying 8 samples ..." and "certified 8 samples (linf_margin+interval)" in lines[1]
    assert [line.split(" (")[0] for line in lines[2:]] == ["PGD at eps 0.01", "PGD at eps 0.02"]
    assert set(ev.robust) == {0.01, 0.02}
