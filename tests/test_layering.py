"""The package's import layering and the torch reference's independence, read from the source (no imports run).

Imports flow one way (contracts → features/masks → network → policy → env → rollout/ppo → train); these checks pin
the edges that were once crossed the wrong way, and keep the reference free of esper_jax so a bug there cannot hide
on both sides of a parity test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _offending(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    hits = {}
    for path in files:
        bad = sorted(m for m in imported_modules(path) if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))
        if bad:
            hits[str(path.relative_to(ROOT))] = bad
    return hits


def test_the_environment_does_not_import_the_rollout_or_anything_above_it():
    files = sorted((ROOT / "esper_jax" / "env").rglob("*.py"))
    assert files, "no environment sources found"
    above = ("esper_jax.rollout", "esper_jax.ppo", "esper_jax.advantages", "esper_jax.ppo_loss", "esper_jax.train",
             "esper_jax.trainer", "esper_jax.evaluation")
    assert _offending(files, above) == {}


@pytest.mark.parametrize("module", ["network", "lstm", "initializers"])
def test_the_network_does_not_import_the_distributions(module):
    assert _offending([ROOT / "esper_jax" / f"{module}.py"], ("esper_jax.distributions", "esper_jax.policy")) == {}


def test_the_reference_imports_nothing_from_esper_jax():
    files = sorted((ROOT / "reference_torch").rglob("*.py"))
    assert files, "no reference sources found"
    assert _offending(files, ("esper_jax",)) == {}


def test_the_wheel_ships_esper_jax_only():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), **config)
    assert "esper_jax" in packages and "esper_jax.env" in packages
    assert [p for p in packages if not p.startswith("esper_jax")] == []
