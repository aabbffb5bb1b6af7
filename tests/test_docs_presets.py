"""docs/presets.md lists every shipped preset (a new preset must get its row and its sources)."""

from __future__ import annotations

import re
from pathlib import Path

from lipcert.config import preset_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "presets.md"


def _documented_names(text: str) -> set[str]:
    # preset names are written in backticks, e.g. `mnist-linf-boost-0.3`
    return set(re.findall(r"`([a-z0-9][a-z0-9.\-]*)`", text))


def test_every_preset_is_documented():
    names = set(preset_names())
    assert len(names) > 20  # the registry itself is found (guards against an empty, vacuous pass)
    missing = sorted(names - _documented_names(DOC.read_text(encoding="utf-8")))
    assert not missing, f"presets without a row in docs/presets.md: {missing}"


def test_documented_names_that_look_like_presets_exist():
    """A row for a renamed or removed preset is an error too (names with a dataset prefix)."""
    prefixes = ("mnist-", "mnist5k-", "digits-", "cifar10-", "cifar100-", "fashion-mnist-", "tinyimagenet-", "custom-")
    doc = {n for n in _documented_names(DOC.read_text(encoding="utf-8")) if n.startswith(prefixes)}
    stale = sorted(doc - set(preset_names()))
    assert not stale, f"docs/presets.md names presets that do not exist: {stale}"
