"""Engine and sessions. One engine per process, created lazily from the settings."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_private_file(path: Path) -> None:
    """Create ``path`` (and a missing folder) readable by its owner only (``0600``, folder
    ``0700``) unless it exists; SQLite gives its ``-wal``/``-shm`` files the same mode."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def rowcount(result: Result[*tuple[Any, ...]]) -> int:
    """The rows an ``UPDATE`` or ``DELETE`` matched. ``Session.execute`` is typed as answering
    a ``Result``; for those statements it is a ``CursorResult``, which counts them."""
    return cast("CursorResult[*tuple[Any, ...]]", result).rowcount


def make_engine(url: str, durable: bool = True) -> Engine:
    """An engine tuned for the backend: WAL + busy timeout on SQLite, pre-ping elsewhere.

    ``durable=False`` (SQLite only) is for state that is rebuilt anyway (wake-ups,
    rate-limit counters): its commits skip the fsync (``synchronous=NORMAL`` under WAL),
    so a power loss may drop the last few, a crash of the process none.
    """
    if is_sqlite(url):
        _private_database(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas if durable else _sqlite_pragmas_not_durable)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _private_database(url: str) -> str:
    """The file of an SQLite ``url``, created private (``create_private_file``) unless it
    is in memory (``":memory:"``, also for an empty path)."""
    database = make_url(url).database or ":memory:"
    if database != ":memory:":
        create_private_file(Path(database))
    return database


def _sqlite_pragmas(dbapi_connection: Any, _record: Any = None) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_pragmas_not_durable(dbapi_connection: Any, _record: Any = None) -> None:
    _sqlite_pragmas(dbapi_connection)
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def sqlite_broker_options(broker_url: str) -> dict[str, Any]:
    """Kombu transport options for the embedded ``sqla+sqlite`` broker: its connections get
    the pragmas of a not-durable engine (the broker carries wake-ups only, which the claim
    loop's polling makes up for); ``{}`` for any other broker."""
    url = broker_url.removeprefix("sqla+")
    if url == broker_url or not is_sqlite(url):
        return {}
    database = _private_database(url)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(database, timeout=30, check_same_thread=False)
        _sqlite_pragmas_not_durable(connection)
        return connection

    return {"creator": connect}


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """The process-wide engine for ``url``."""
    return make_engine(url)


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    """Raise if the database cannot answer ``SELECT 1``."""
    with engine_for(url).connect() as conn:
        conn.execute(text("SELECT 1"))
