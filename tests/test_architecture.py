"""The layering of docs/architecture.md: no module imports a package above its own layer."""

from __future__ import annotations

import ast
from pathlib import Path

import lipcert

#: docs/architecture.md's import order; equal numbers are siblings that may not import each other's
#: layer-mates above them but may share a level.
LAYER = {
    "numerics": 0, "nn": 0, "models": 1, "data": 1, "bounds": 2, "losses": 3, "certify": 4, "attacks": 4,
    "checkpoint": 5, "config": 5, "runlock": 5, "analysis": 6, "train": 7, "report": 8, "export": 8, "cli": 9,
}
ROOT = Path(lipcert.__file__).parent


def _imported_packages(path: Path) -> set[str]:
    """Top-level lipcert packages a module imports (relative or absolute)."""
    rel = path.relative_to(ROOT).parts
    depth = len(rel) - 1  # how many packages deep the module sits below lipcert/
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("lipcert."):
                found.add(node.module.split(".")[1])
            elif node.level > depth:  # climbs to lipcert/ itself
                target = (node.module or "").split(".")[0]
                names = [target] if target else [a.name for a in node.names]
                found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lipcert."))
    return {name.removesuffix(".py") for name in found}


def test_no_module_imports_upward():
    upward = []
    for path in ROOT.rglob("*.py"):
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if own not in LAYER:
            continue
        for pkg in _imported_packages(path):
            if pkg in LAYER and LAYER[pkg] > LAYER[own]:
                upward.append(f"{path.relative_to(ROOT)} imports lipcert.{pkg}")
    assert not upward, "imports against docs/architecture.md's layering:\n" + "\n".join(sorted(upward))


def test_the_check_sees_imports():
    """Guard against a checker that finds nothing: cli must be seen importing train."""
    assert "train" in _imported_packages(ROOT / "cli" / "train_cmd.py")
