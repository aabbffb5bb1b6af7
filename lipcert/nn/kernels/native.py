"""Build and load the native CPU kernels (``cpu_kernels.cpp``) on first use.

The C++ source ships inside the package and exposes a plain C ABI, so it is compiled with a
single ``c++ -O3 -march=native -fopenmp -shared`` call (about 5 s, no torch headers, no ninja)
and loaded with :mod:`ctypes`. The shared library is cached under the torch extensions
directory (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``) in a folder whose name
hashes the source, the compiler command and the CPU model, so a changed source or machine
triggers a rebuild and concurrent processes never see a half-written file.

Anything that fails (no compiler, unsupported platform, ``LIPCERT_NO_NATIVE=1``) makes
:func:`load` return ``None``; callers then use the reference backend and a one-line notice is
emitted once per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

_SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_ABI_VERSION = 3
_logger = logging.getLogger("lipcert.kernels")

_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None
_build_seconds: float | None = None
_notified = False


def _cpu_model() -> str:
    """CPU model and ISA flags: part of the cache key, since the build uses -march=native."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("model name", "flags", "Features", "CPU part") and key not in found:
                found[key] = line
    except OSError:
        pass
    return "\n".join(found.values()) or (platform.processor() + platform.machine())


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _flags() -> list[str]:
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        flags.append("-march=native" if platform.machine() in ("x86_64", "AMD64") else "-mcpu=native")
    return flags


def cache_dir() -> Path:
    """Folder holding the built library for this source, compiler and CPU."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(Path.home(), ".cache", "torch_extensions")
    key = hashlib.sha256()
    key.update(_SOURCE.read_bytes())
    key.update(" ".join([_compiler() or "", *_flags(), _cpu_model(), sys.platform]).encode())
    return Path(root) / f"lipcert_cpu_kernels_{key.hexdigest()[:16]}"


def _build(target: Path) -> None:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cxx, *_flags(), str(_SOURCE), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees the old or the new file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for dt in ("f32", "f64"):
        getattr(lib, f"lc_linf_fwd_{dt}").argtypes = [p, p, i64, i64, i64, p, p, i32]
        getattr(lib, f"lc_linf_bwd_{dt}").argtypes = [p, p, p, p, i64, i64, i64, p, p, i32]
        getattr(lib, f"lc_lp_fwd_{dt}").argtypes = [p, p, i64, i64, i64, dbl, p, i32]
        getattr(lib, f"lc_lp_bwd_{dt}").argtypes = [p, p, p, p, i64, i64, i64, dbl, p, p, i32]
        for f in ("linf_fwd", "linf_bwd", "lp_fwd", "lp_bwd"):
            getattr(lib, f"lc_{f}_{dt}").restype = i32  # 1: NaN in x or w, nothing computed
    lib.lc_lp_fwd8_two_pass_f32.argtypes = [p, p, i64, i64, i64, p, i32]
    lib.lc_lp_fwd8_two_pass_f32.restype = None
    lib.lc_linf_peak_f32.argtypes = [i64, i32]
    lib.lc_linf_peak_f32.restype = dbl
    lib.lc_pow_peak_f32.argtypes = [i64, dbl]
    lib.lc_pow_peak_f32.restype = dbl
    lib.lc_skip_thresholds.argtypes = [dbl, i64, p]
    lib.lc_skip_thresholds.restype = i32
    lib.lc_abi_version.restype = i32
    lib.lc_has_avx512.restype = i32


def load() -> ctypes.CDLL | None:
    """The loaded native library, building it on first use; ``None`` if unavailable."""
    global _lib, _tried, _error, _build_seconds
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("LIPCERT_NO_NATIVE", "") not in ("", "0"):
        _error = "disabled by LIPCERT_NO_NATIVE"
        return None
    try:
        target = cache_dir() / "lipcert_cpu_kernels.so"
        if not target.exists():
            t0 = time.perf_counter()
            _build(target)
            _build_seconds = time.perf_counter() - t0
            _logger.info("built native l_p-distance kernels in %.1f s: %s", _build_seconds, target)
        lib = ctypes.CDLL(str(target))
        _declare(lib)
        if lib.lc_abi_version() != _ABI_VERSION:
            raise RuntimeError(f"stale native library {target} (ABI {lib.lc_abi_version()} != {_ABI_VERSION})")
        _lib = lib
    except Exception as exc:  # noqa: BLE001 - any failure means: use the reference path
        _error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _lib = None
    return _lib


def unavailable_reason() -> str | None:
    """Why the native library is not in use (``None`` when it is, or was not tried yet)."""
    return _error


def build_seconds() -> float | None:
    """Seconds the build took in this process (``None``: loaded from the cache or not built)."""
    return _build_seconds


def notify_fallback() -> None:
    """Emit the one-line fallback notice (once per process)."""
    global _notified
    if _notified:
        return
    _notified = True
    warnings.warn(
        f"lipcert: native CPU l_p-distance kernels unavailable ({_error}); using the slower pure-torch reference",
        RuntimeWarning,
        stacklevel=3,
    )


def _reset_for_tests() -> None:
    """Forget the load state (tests simulate a missing compiler)."""
    global _lib, _tried, _error, _build_seconds, _notified
    _lib, _tried, _error, _build_seconds, _notified = None, False, None, None, False
