"""torchrun into a locked run directory: rank 0 is refused and every rank learns it (no rank waits
in a collective for a partner that gave up). The script calls ``lipcert.train.train`` directly, so
the refusal comes from ``Trainer.fit``'s lock, not the CLI's early check."""

from __future__ import annotations

import sys

from lipcert.runlock import RunLock
from tests.train.test_distributed import DDP, _free_port, _run

SCRIPT = """
import sys
from lipcert.config import apply_overrides, load_preset
from lipcert.runlock import RunLockedError
from lipcert.train import train

cfg = apply_overrides(load_preset("digits-linf"), sys.argv[2:])
try:
    train(cfg, sys.argv[1], device="cpu", progress=False)
except RunLockedError as err:
    print(f"refused: {err}", flush=True)
"""


def test_locked_directory_refuses_all_ranks(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "train_locked.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", _free_port(),
           str(script), str(out), *DDP]
    with RunLock(out, command="test holder"):
        proc = _run(cmd, timeout=180, cwd=tmp_path)  # fails the test if any rank hangs
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("refused: ") == 2 and "is in use" in proc.stdout and "test holder" in proc.stdout
    assert not (out / "last.pt").exists()
