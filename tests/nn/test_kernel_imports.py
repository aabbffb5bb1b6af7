"""Importing lipcert does not pull in torch._dynamo (seconds of start-up), yet torch.compile still
treats the backend choice as a constant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dynamo_marker_is_what_torch_sets():
    import torch

    from lipcert.nn import kernels

    def f():
        return 0

    torch.compiler.assume_constant_result(f)  # torch's own decorator (imports dynamo)
    marked = [k for k in vars(f) if "constant" in k]
    assert marked == ["_dynamo_marked_constant"] and f._dynamo_marked_constant is True
    assert getattr(kernels._backend_name, "_dynamo_marked_constant", False) is True


def test_import_does_not_load_dynamo():
    code = "import sys; import lipcert.certify, lipcert.data, lipcert.checkpoint; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "False"
