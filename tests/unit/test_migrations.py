"""The Alembic migrations produce exactly the models' schema, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from easel.migrations.upgrade import upgrade
from easel.shared.models import Base


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_postgres_schema_matches_models(fresh_postgres_url: str) -> None:
    upgrade(fresh_postgres_url)
    assert _diff(fresh_postgres_url) == []
    upgrade(fresh_postgres_url)  # idempotent at head
    engine = create_engine(fresh_postgres_url)
    assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
    engine.dispose()


def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _diff(url) == []


def test_empty_database_differs_from_models(tmp_path: Path) -> None:
    """The comparison can fail: without migrations every table is missing."""
    diff = _diff(f"sqlite:///{tmp_path / 'empty.db'}")
    assert {entry[0] for entry in diff} == {"add_table", "add_index"}
