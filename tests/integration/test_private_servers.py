"""When nothing answers at the configured PostgreSQL or Redis, or the server there refuses
us, the session fixtures start private servers from the installed binaries
(``bench.servers``); a server that serves is used as it is."""

from __future__ import annotations

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.processes import free_port
from bench.servers import (
    answers,
    claimed_redis_db,
    postgres_refusal,
    postgres_server,
    redis_server,
    temporary_database,
)


def test_no_redis_at_the_configured_url_starts_a_private_one() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert not answers(closed)
    with redis_server(closed) as url:
        assert url != closed and answers(url)
        with claimed_redis_db(url) as db_url:
            client = redis.Redis.from_url(db_url)
            client.set("k", "v")
            assert client.get("k") == b"v"
            client.close()
    assert not answers(url)  # stopped on the way out


def test_no_postgres_at_the_configured_url_starts_a_private_cluster() -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    assert not answers(closed)
    with postgres_server(closed) as admin_url:
        assert admin_url != closed and answers(admin_url)
        with temporary_database("easel_private", admin_url) as url:
            engine = create_engine(url)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT current_database()")).scalar_one() == url.rsplit("/", 1)[1]
            engine.dispose()
    assert not answers(admin_url)  # destroyed on the way out


def test_servers_that_answer_are_used_as_they_are(postgres_admin_url: str, redis_server_url: str) -> None:
    with postgres_server(postgres_admin_url) as admin_url, redis_server(redis_server_url) as url:
        assert (admin_url, url) == (postgres_admin_url, redis_server_url)


def test_a_postgres_that_refuses_us_is_replaced_by_a_private_one(postgres_admin_url: str) -> None:
    """As a distribution's own cluster would: it listens, but not for this login or database."""
    refusing = make_url(postgres_admin_url).set(database="no_such_database_here")
    refusing_url = refusing.render_as_string(hide_password=False)
    assert answers(refusing_url)
    assert "no_such_database_here" in (postgres_refusal(refusing_url) or "")
    with postgres_server(refusing_url) as admin_url:
        assert admin_url != refusing_url and postgres_refusal(admin_url) is None
