"""The unit tier (``make test-fast``): no PostgreSQL, Redis, S3 or other server.

The session fixtures of servers are refused here with a message that says where such a
test belongs; the embedded defaults (SQLite, a local folder) and the tiny pipeline are
what unit tests run on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine
from easel.shared.registry import ModelSource, ModelSpec, Registry
from easel.shared.settings import Settings
from easel.shared.storage import LocalStorage

SERVER_FIXTURES = (
    "postgres_admin_url",
    "redis_server_url",
    "postgres_url",
    "fresh_postgres_url",
    "redis_url",
    "own_redis_url",
    "s3",
    "service_env",
    "services_stack",
    "embedded_stack",
)


def _refuse(name: str) -> Any:
    @pytest.fixture(name=name)
    def refused() -> None:
        pytest.fail(
            f"unit tests start no server, but this one asks for the {name!r} fixture: "
            "move it to tests/integration, or run it on SQLite and a local folder"
        )

    return refused


for _name in SERVER_FIXTURES:
    globals()[f"_refused_{_name}"] = _refuse(_name)


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path) -> Iterator[dict[str, Any]]:
    """What a JobRunner runs on: SQLite sessions, settings, a registry of tiny-sd and a
    local folder (``tests.factories.make_runner`` / ``enqueue`` / ``fetch`` take it)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = Settings(home=tmp_path, database_url=url)
    spec = ModelSpec(
        name="tiny-sd", source=ModelSource.DIRECTORY, location=str(tiny_model), default_size=64, max_size=512
    )
    yield {
        "sessions": sessionmaker(engine, expire_on_commit=False),
        "settings": settings,
        "registry": Registry([spec], "tiny-sd"),
        "storage": LocalStorage(tmp_path / "out"),
    }
    engine.dispose()


@pytest.fixture
def app(settings: Settings) -> Flask:
    """The web app on the test module's ``settings`` fixture."""
    from easel.web import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    """A test client of the ``app`` fixture."""
    with app.test_client() as client:
        yield client
