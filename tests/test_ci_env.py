"""What CI promises to exercise must not be skipped there.

``.ci/run`` sets ``LIPCERT_REQUIRE_TRITON=1``: the ``test`` extra installs triton (Linux x86_64 /
aarch64), so the Triton kernels' interpreter test (tests/nn/test_kernels.py) must run. Without
the variable (a developer's machine without triton) that test skips and this one does too.
"""

from __future__ import annotations

import os

import pytest


def test_triton_present_when_ci_requires_it():
    if os.environ.get("LIPCERT_REQUIRE_TRITON") != "1":
        pytest.skip("LIPCERT_REQUIRE_TRITON is not set (only .ci/run requires triton)")
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"CI requires triton (the Triton interpreter tests would be skipped): {type(exc).__name__}: {exc}; "
                    "it comes with `pip install '.[test]'` on Linux x86_64 / aarch64")
    from lipcert.nn.kernels import triton_backend

    assert triton_backend.HAVE_TRITON, "triton imports but lipcert's triton backend did not load it"
