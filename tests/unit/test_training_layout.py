"""``vaelab.training`` runs the steps and never reaches back into ``vaelab.lit``."""

from __future__ import annotations

import ast
from pathlib import Path

import vaelab.training

PACKAGE = Path(vaelab.training.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_training_never_imports_lit() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        bad = {m for m in _imports(path) if m == "vaelab.lit" or m.startswith("vaelab.lit.")}
        assert not bad, f"{path.name} imports {bad}"
