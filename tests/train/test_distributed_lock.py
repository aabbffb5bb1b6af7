"""torchrun into a locked run directory: rank 0 is refused and every rank exits (no rank waits in
a collective for a partner that gave up)."""

from __future__ import annotations

import sys

from lipcert.runlock import RunLock
from tests.train.test_distributed import DDP, _free_port, _run


def test_locked_directory_refuses_all_ranks(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _free_port(),
           "-m", "lipcert", "train", "--preset", "digits-linf", "--no-progress", "--device", "cpu",
           "--out", str(out), *[a for kv in DDP for a in ("--set", kv)]]
    with RunLock(out, command="test holder"):
        proc = _run(cmd, timeout=180, cwd=tmp_path)  # fails the test if any rank hangs
    assert proc.returncode != 0
    assert proc.stderr.count("is in use: a lipcert train is writing to it") == 2, proc.stderr[-3000:]  # both ranks say why
    assert "test holder" in proc.stderr
    assert not (out / "last.pt").exists()
