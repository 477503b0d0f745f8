"""The Alembic migrations produce exactly the models' schema on SQLite (PostgreSQL:
``tests/integration/test_migrations_postgres.py``)."""

from __future__ import annotations

from pathlib import Path

from easel.migrations.upgrade import upgrade
from tests.factories import schema_diff


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert schema_diff(url) == []


def test_empty_database_differs_from_models(tmp_path: Path) -> None:
    """The comparison can fail: without migrations every table is missing."""
    diff = schema_diff(f"sqlite:///{tmp_path / 'empty.db'}")
    assert {entry[0] for entry in diff} == {"add_table", "add_index"}
