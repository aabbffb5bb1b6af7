"""Machine facts the benchmark scripts print with their tables, and where the tables go."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), else what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(path: Path, section: str, body: str, preamble: str = "# Benchmarks\n") -> None:
    """Replace the markdown section that starts with the line ``section`` (up to the next ``## ``
    heading) by ``body``, or append ``body`` when the file has no such section yet (a new file
    starts with ``preamble``)."""
    text = path.read_text() if path.exists() else preamble
    start = text.find(section)
    if start >= 0:
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + body + (text[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)
