"""Session fixtures: the real services (PostgreSQL, Redis, S3 over HTTP) and stacks.

Every test run gets its own PostgreSQL database, its own Redis database number
and its own bucket, so runs never see each other's leftovers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    Stack,
    base_env,
    claimed_redis_db,
    free_port,
    install_tiny_model,
    temporary_database,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny-sd folder, built once per test session."""
    from easel.worker.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    with temporary_database("easel_test") as url:
        yield url
        from easel.shared.db import engine_for

        engine_for.cache_clear()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """An empty database of its own for one test."""
    with temporary_database("easel_t") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number claimed for this run."""
    with claimed_redis_db() as url:
        yield url


@pytest.fixture
def own_redis_url() -> Iterator[str]:
    """A Redis database for one test, apart from the session stacks' workers."""
    with claimed_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server over HTTP on a free port, with a bucket of this run's own."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in creds.items():
        os.environ.setdefault(key, value)
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"easel-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield {"endpoint": endpoint, "bucket": bucket, **creds}
    server.stop()


@pytest.fixture(scope="session")
def service_env(postgres_url: str, redis_url: str, s3: dict[str, str]) -> dict[str, str]:
    """EASEL_ settings that point at the real PostgreSQL, Redis and S3."""
    return {
        "EASEL_DATABASE_URL": postgres_url,
        "EASEL_BROKER_URL": redis_url,
        "EASEL_STORAGE_URL": f"s3://{s3['bucket']}/outputs",
        "EASEL_S3_ENDPOINT_URL": s3["endpoint"],
        "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": s3["AWS_DEFAULT_REGION"],
    }


WEBHOOK_SECRET = "test-webhook-secret"
STACK_SETTINGS = {
    "EASEL_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "EASEL_WEBHOOK_MAX_ATTEMPTS": "3",
    "EASEL_WEBHOOK_BACKOFF_SECONDS": "0.3",
    "EASEL_WEBHOOK_TIMEOUT_SECONDS": "2",
    "EASEL_PROGRESS_INTERVAL_SECONDS": "0.2",
    "EASEL_HEARTBEAT_SECONDS": "1",
    "EASEL_SUBMIT_RATE_LIMIT": "100000/minute",  # the suite submits fast; limits have their own tests
    "EASEL_RATE_LIMIT": "100000/minute",
}


def _stack(home: Path, tiny_model: Path, env: dict[str, str]) -> Stack:
    home.mkdir(parents=True, exist_ok=True)
    install_tiny_model(tiny_model, home)
    stack = Stack(env=base_env(home, **STACK_SETTINGS, **env), workdir=home)
    stack.migrate()
    return stack


@pytest.fixture(scope="session")
def services_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, service_env: dict[str, str]
) -> Iterator[Stack]:
    """web + one worker on PostgreSQL, Redis and S3, with authentication on (a key made by
    `easel keys create` rides on every request)."""
    stack = _stack(
        tmp_path_factory.mktemp("services-stack"),
        tiny_model,
        {**service_env, "EASEL_WEBHOOK_ALLOW_PRIVATE": "true"},
    )
    stack.create_key("services-stack")
    try:
        stack.start_web()
        stack.start_worker()
        stack.start_webhooks()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    """web + one worker on the embedded defaults (SQLite, SQLite broker, local folder),
    authentication off as in `make run`."""
    stack = _stack(tmp_path_factory.mktemp("embedded-stack"), tiny_model, {"EASEL_AUTH_ENABLED": "false"})
    try:
        stack.start_web()
        stack.start_worker()
        stack.start_webhooks()
        yield stack
    finally:
        stack.stop()
