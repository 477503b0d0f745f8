"""The embedded SQLite files: durable jobs, a not-durable broker (webhook deliveries) and
counters; no wake-ups on the embedded broker."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from easel.shared.db import make_engine, sqlite_broker_options
from easel.shared.queue import broker_wakes_workers, make_celery, send_wakeup, send_webhook
from easel.shared.settings import Settings

FULL, NORMAL = 2, 1  # PRAGMA synchronous


def pragmas(engine_url: str, durable: bool) -> tuple[str, int]:
    engine = make_engine(engine_url, durable=durable)
    try:
        with engine.connect() as conn:
            mode = conn.execute(text("PRAGMA journal_mode")).scalar_one()
            synchronous = conn.execute(text("PRAGMA synchronous")).scalar_one()
        return str(mode), int(synchronous)
    finally:
        engine.dispose()


def test_the_jobs_database_syncs_every_commit(tmp_path: Path) -> None:
    assert pragmas(f"sqlite:///{tmp_path / 'easel.db'}", durable=True) == ("wal", FULL)


def test_rebuildable_state_skips_the_fsync(tmp_path: Path) -> None:
    assert pragmas(f"sqlite:///{tmp_path / 'limits.db'}", durable=False) == ("wal", NORMAL)


def test_the_embedded_broker_uses_wal_without_fsync_and_keeps_messages(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    app = make_celery(settings)
    assert send_webhook(app, "job-1")
    database = tmp_path / "broker.db"
    assert database.stat().st_mode & 0o077 == 0  # private, like the other state files
    connect = sqlite_broker_options(settings.broker_url)["creator"]
    connection = connect()
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA synchronous").fetchone() == (NORMAL,)
    finally:
        connection.close()
    with sqlite3.connect(database) as reader:
        assert reader.execute("SELECT count(*) FROM kombu_message").fetchone() == (1,)


def test_other_brokers_get_no_sqlite_options() -> None:
    assert sqlite_broker_options("redis://127.0.0.1:6379/0") == {}
    assert sqlite_broker_options("sqla+postgresql://127.0.0.1/test") == {}


def test_no_wake_ups_on_the_embedded_broker_where_the_idle_poll_is_sooner(tmp_path: Path) -> None:
    from easel.worker.process import idle_poll_seconds

    embedded = Settings(home=tmp_path)
    assert not broker_wakes_workers(embedded.broker_url) and idle_poll_seconds(embedded) == 0.1
    assert send_wakeup(make_celery(embedded), "job-1", "tiny-sd")  # "sent": nothing to send
    with sqlite3.connect(tmp_path / "broker.db") as broker:  # nothing published: no table even
        assert broker.execute("SELECT name FROM sqlite_master WHERE name = 'kombu_message'").fetchall() == []
    redis = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    assert broker_wakes_workers(redis.broker_url) and idle_poll_seconds(redis) == 1.0
    assert idle_poll_seconds(Settings(home=tmp_path, idle_poll_seconds=0.5)) == 0.5
