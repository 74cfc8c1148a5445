"""The shape of the code: the engine in bot/ never reaches for Discord, the cogs or the settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("discord", "cogs", "config")
ENGINE = sorted(p for p in (ROOT / "bot").rglob("*.py") if p.name != "__main__.py")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_module_does_not_import_discord_cogs_or_config(path):
    assert imported_roots(path).isdisjoint(FORBIDDEN)


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_engine_module_says_what_it_owns(path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert docstring or path.name == "__init__.py" and not path.read_text().strip()


def test_the_engine_type_checks_strictly():
    """mypy --strict over bot/ (configured in pyproject.toml) finds nothing."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:]
