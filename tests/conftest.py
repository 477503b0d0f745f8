"""Session fixtures: the real services (PostgreSQL, Redis, S3 over HTTP) and stacks.

PostgreSQL and Redis are the servers at ``EASEL_TEST_PG`` / ``EASEL_TEST_REDIS``
(default 127.0.0.1:5432 and :6379) when they answer; when nothing listens there,
private ones are started from the installed server binaries for the session
(``bench.servers``). Every run gets its own PostgreSQL database, its own Redis
database number and its own bucket, so runs never see each other's leftovers.

``tests/unit`` starts no server: its conftest refuses these fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import easel.worker.engine  # noqa: F401  # torchvision importable before diffusers (torchvision_compat)
from bench.processes import Stack
from bench.servers import (
    S3_CREDENTIALS,
    claimed_redis_db,
    postgres_server,
    redis_server,
    s3_server,
    temporary_database,
)
from tests.factories import make_stack

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny-sd folder, built once per test session."""
    from easel.worker.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A tiny LoRA for tiny-sd (tests/adapter_models.py), built once per session."""
    from tests.adapter_models import build_tiny_lora

    return build_tiny_lora(tiny_model, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A tiny ControlNet for tiny-sd (tests/adapter_models.py), built once per session."""
    from tests.adapter_models import build_tiny_controlnet

    return build_tiny_controlnet(tiny_model, tmp_path_factory.mktemp("controlnet") / "tiny-cn")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server whose user may create databases: the configured one, or a
    private cluster when nothing answers there."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A Redis server: the configured one, or a private ``redis-server`` when nothing
    answers there."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    with temporary_database("easel_test", postgres_admin_url) as url:
        yield url
        from easel.shared.db import engine_for

        engine_for.cache_clear()


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """An empty database of its own for one test."""
    with temporary_database("easel_t", postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database number claimed for this run."""
    with claimed_redis_db(redis_server_url) as url:
        yield url


@pytest.fixture
def own_redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database for one test, apart from the session stacks' workers."""
    with claimed_redis_db(redis_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server over HTTP on a free port, with a bucket of this run's own."""
    for key, value in S3_CREDENTIALS.items():
        os.environ.setdefault(key, value)
    bucket = f"easel-test-{uuid.uuid4().hex[:12]}"
    with s3_server(bucket) as (endpoint, _client):
        yield {"endpoint": endpoint, "bucket": bucket, **S3_CREDENTIALS}


@pytest.fixture(scope="session")
def service_env(postgres_url: str, redis_url: str, s3: dict[str, str]) -> dict[str, str]:
    """EASEL_ settings that point at the real PostgreSQL, Redis and S3."""
    return {
        "EASEL_DATABASE_URL": postgres_url,
        "EASEL_BROKER_URL": redis_url,
        "EASEL_STORAGE_URL": f"s3://{s3['bucket']}/outputs",
        "EASEL_S3_ENDPOINT_URL": s3["endpoint"],
        **S3_CREDENTIALS,
    }


@pytest.fixture(scope="session")
def services_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, service_env: dict[str, str]
) -> Iterator[Stack]:
    """web + one worker on PostgreSQL, Redis and S3, with authentication on (a key made by
    `easel keys create` rides on every request)."""
    stack = make_stack(
        tmp_path_factory.mktemp("services-stack"),
        tiny_model,
        {**service_env, "EASEL_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    stack.create_key("services-stack")
    yield from stack.running(worker=True, webhooks=True)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    """web + one worker on the embedded defaults (SQLite, SQLite broker, local folder),
    authentication off as in `make run`."""
    stack = make_stack(tmp_path_factory.mktemp("embedded-stack"), tiny_model, {"EASEL_AUTH_ENABLED": "false"})
    yield from stack.running(worker=True, webhooks=True)
