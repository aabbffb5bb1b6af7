"""Run-directory lock: a second writer is refused and told who holds the directory; stale locks
(dead holders) are taken over; readers can ask whether a run is in progress."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipcert import runlock
from lipcert.runlock import LOCK_NAME, RunLock, RunLockedError, running

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from lipcert.runlock import RunLock; "
        "RunLock(sys.argv[1], command='holder').acquire(); print('locked', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/run (killed at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run"), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_is_refused_with_holder(tmp_path, holder):
    with pytest.raises(RunLockedError, match=rf"in use.*pid {holder.pid} on host {socket.gethostname()}.*holder.*another --out"):
        RunLock(tmp_path / "run").acquire()
    info = running(tmp_path / "run")
    assert info is not None and info["pid"] == holder.pid


def test_dead_holder_is_taken_over_with_a_note(tmp_path, holder):
    holder.kill()
    holder.wait()
    assert running(tmp_path / "run") is None  # the kernel dropped the flock with the process
    notes = []
    with RunLock(tmp_path / "run", note=notes.append):
        assert len(notes) == 1 and "stale lock" in notes[0] and str(holder.pid) in notes[0]
        info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["command"]
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released: emptied, no stale note next time
    notes.clear()
    with RunLock(tmp_path / "run", note=notes.append):
        assert notes == []


def test_same_process_cannot_hold_twice(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    """On file systems without flock: a dead pid on this host is stale, a live one or another host's is not."""
    monkeypatch.setattr(runlock, "_flock", lambda fd: None)
    lock_file = tmp_path / LOCK_NAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    notes = []
    RunLock(tmp_path, note=notes.append).acquire().release()
    assert notes and "stale" in notes[0]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_file.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "since": "now"}))
        with pytest.raises(RunLockedError, match=f"pid {live.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere.invalid", "since": "now"}))
    with pytest.raises(RunLockedError, match=f"elsewhere.invalid.*remove {lock_file}"):
        RunLock(tmp_path).acquire()


def test_report_warns_on_a_run_in_progress(tmp_path, holder):
    from lipcert.report import make_report

    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="still in progress"):
        make_report(run)
    (run / "results.json").write_text(json.dumps({"dataset": "digits", "split": "test", "n": 1, "clean_accuracy": 1.0, "eps": {}}))
    with pytest.warns(runlock.RunInProgressWarning, match=f"pid {holder.pid}"):
        out = make_report(run)
    assert "still in progress" in out.read_text()
    holder.kill()
    holder.wait()
    time.sleep(0.05)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", runlock.RunInProgressWarning)
        assert "in progress" not in make_report(run).read_text()
