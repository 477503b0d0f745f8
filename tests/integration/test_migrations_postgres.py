"""The Alembic migrations produce exactly the models' schema on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from easel.migrations.upgrade import upgrade
from easel.shared.models import Base
from tests.factories import schema_diff


def test_postgres_schema_matches_models(fresh_postgres_url: str) -> None:
    upgrade(fresh_postgres_url)
    assert schema_diff(fresh_postgres_url) == []
    upgrade(fresh_postgres_url)  # idempotent at head
    engine = create_engine(fresh_postgres_url)
    assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
    engine.dispose()
