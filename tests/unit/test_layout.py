"""Who may import whom among the test and benchmark modules: bench imports nothing from
tests, and test modules share code through tests/factories.py and the conftest fixtures,
never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

from bench.processes import ROOT


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        hits = sorted(m for m in imported_modules(path) if m == "tests" or m.startswith(forbidden))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_bench_imports_nothing_from_tests() -> None:
    assert offenders("bench", ("tests.",)) == {}


def test_test_modules_do_not_import_each_other() -> None:
    assert offenders("tests", ("tests.unit", "tests.integration", "tests.e2e", "tests.conftest")) == {}


def test_the_check_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tests.unit.test_app import counts\n")
    assert imported_modules(module) == {"tests.unit.test_app"}
