"""Run-directory lock: one ``lipcert train`` writes into a run directory at a time.

The writer holds an exclusive ``flock`` on ``DIR/.lock`` for as long as it trains, and writes who
it is into that file (JSON: pid, host, start time, command). The kernel drops the flock when the
process ends, however it ends (also SIGKILL), so a lock file left behind by a dead run never blocks
a new one: the new run takes it over and says so. Where the file system does not support flock
(some network file systems), the JSON alone decides: a holder on this host whose pid is gone is
stale and taken over; a live one, or one on another host, refuses the new run.

A second writer is refused at once with :class:`RunLockedError`, which names the holder and what
to do. Readers (``lipcert report``) ask :func:`running` and warn instead of refusing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """The run directory is being written by another ``lipcert train``."""


class RunInProgressWarning(UserWarning):
    """A run directory read while a ``lipcert train`` still writes it."""


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_info(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        info = json.loads(raw.decode()) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"pid": None, "host": "?", "since": "?", "command": "(unreadable lock file)"}
    return info if isinstance(info, dict) else None


def describe(info: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-01-01 12:00:00 UTC (lipcert train ...)``."""
    return (f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')}"
            + (f" ({info['command']})" if info.get("command") else ""))


def refusal(run_dir: Path, info: dict[str, Any] | None) -> RunLockedError:
    """The error a second writer gets: who holds ``run_dir`` and what to do."""
    who = describe(info) if info else "another process (its lock file names no holder)"
    return RunLockedError(
        f"{run_dir} is in use: a lipcert train is writing to it ({who}). Wait for it to finish, choose another --out, "
        f"or, if that run is gone (e.g. it ran on another machine that crashed), remove {run_dir / LOCK_NAME}")


def _flock(fd: int) -> bool | None:
    """True: locked; False: someone else holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise


class RunLock:
    """``with RunLock(dir): ...`` holds the run directory; :meth:`acquire` / :meth:`release` by hand.

    ``note`` receives one line when a stale lock (a dead run's) is taken over.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None, note=None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else " ".join(["lipcert", *sys.argv[1:]])[:500]
        self.note = note if note is not None else (lambda line: print(line, file=sys.stderr, flush=True))
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            got = _flock(fd)
            previous = _read_info(fd)
            if got is False:
                raise refusal(self.run_dir, previous)
            if got is None and previous and previous.get("pid") is not None:
                same_host = previous.get("host") == _host()
                if not same_host or _pid_alive(int(previous["pid"])):
                    raise refusal(self.run_dir, previous)
            if previous and previous.get("pid") is not None:
                self.note(f"lipcert: taking over a stale lock in {self.run_dir} left by a run that ended without "
                          f"releasing it ({describe(previous)})")
            info = {"pid": os.getpid(), "host": _host(), "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "command": self.command}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(info) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (it stays, so a waiting process never locks an unlinked inode) and unlock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def running(run_dir: str | Path) -> dict[str, Any] | None:
    """The holder's info when a ``lipcert train`` is writing ``run_dir`` now, else None (never blocks)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = _read_info(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return info or {"pid": None, "host": "?", "since": "?"}
        except OSError:  # no flock here: trust the pid on this host
            if info and info.get("pid") is not None and (info.get("host") != _host() or _pid_alive(int(info["pid"]))):
                return info
            return None
        return None
    finally:
        os.close(fd)


__all__ = ["LOCK_NAME", "RunInProgressWarning", "RunLock", "RunLockedError", "describe", "refusal", "running"]
