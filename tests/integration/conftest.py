"""Fixtures of the integration tier (real services and real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from bench.processes import Stack
from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine


@pytest.fixture(params=["services", "embedded"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each session stack in turn: on PostgreSQL, Redis and S3, then on the embedded
    defaults. A module with a stack of its own defines its own ``stack``."""
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions of a fresh migrated database: a PostgreSQL one, then a SQLite file."""
    if request.param == "postgresql":
        url = request.getfixturevalue("fresh_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()
