"""Rate limits, counted in one place that every web process shares.

* Requests and submissions per API key (or client address): ``EASEL_RATE_LIMIT`` and
  ``EASEL_SUBMIT_RATE_LIMIT``. A submission counts only when it is accepted: a refused
  (4xx) request uses no submit quota.
* Failed authentications per client address (``EASEL_AUTH_FAILURE_LIMIT``): unknown or
  revoked keys, calls without a key, failed logins. Past the limit, every further
  failure from that address is answered ``429`` with ``Retry-After`` until the window
  ends; a valid key is never refused for them. The address is the client's as
  ``EASEL_TRUSTED_PROXY_HOPS`` (werkzeug's ``ProxyFix``) reads it behind a proxy.

The counters live in Redis when the broker is Redis, and otherwise in SQL
(``SqlStorage``): a ``limits.db`` SQLite file next to an SQLite database (the embedded
default, so gunicorn's processes share it), or a table of the PostgreSQL database.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse
from limits.storage import Storage
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from easel.shared.db import is_sqlite, make_engine
from easel.shared.settings import Settings

log = logging.getLogger(__name__)

SQL_SCHEME = "easelsql"
SQL_DRIVERS = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")
COUNTERS = Table(
    "rate_limit_counters",
    MetaData(),
    Column("key", String(255), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
)
_UPSERT = text(
    "INSERT INTO rate_limit_counters (key, count, expires_at) VALUES (:key, :amount, :expires) "
    "ON CONFLICT (key) DO UPDATE SET "
    "count = CASE WHEN rate_limit_counters.expires_at <= :now THEN :amount "
    "ELSE rate_limit_counters.count + :amount END, "
    "expires_at = CASE WHEN rate_limit_counters.expires_at <= :now THEN :expires "
    "ELSE rate_limit_counters.expires_at END "
    "RETURNING count"
)
_CREATE = text(
    "CREATE TABLE IF NOT EXISTS rate_limit_counters "
    "(key VARCHAR(255) PRIMARY KEY, count INTEGER NOT NULL, expires_at FLOAT NOT NULL)"
)
SWEEP_EVERY = 500  # increments between deletions of expired counters


class SqlStorage(Storage):
    """Fixed-window counters in one SQL table (SQLite or PostgreSQL): each increment is
    one atomic upsert, so every process and machine on the database counts together.

    Its URI is ``easelsql+`` and the SQLAlchemy URL: ``easelsql+sqlite:////var/limits.db``.
    """

    STORAGE_SCHEME = [f"{SQL_SCHEME}+{driver}" for driver in SQL_DRIVERS]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        url = uri.removeprefix(f"{SQL_SCHEME}+")
        self.engine = make_engine(url, durable=False)  # counters: a lost increment is harmless
        self._create_table()
        self._increments = 0
        self._lock = threading.Lock()

    def _create_table(self) -> None:
        """Create the counters table unless it exists; web processes start together, so a
        concurrent creation by another one is fine."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_CREATE)
        except SQLAlchemyError:
            if not inspect(self.engine).has_table(COUNTERS.name):
                raise

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self.engine.begin() as conn:
            count = conn.execute(
                _UPSERT, {"key": key, "amount": amount, "expires": now + expiry, "now": now}
            ).scalar_one()
        with self._lock:
            self._increments += 1
            sweep = self._increments % SWEEP_EVERY == 0
        if sweep:
            with self.engine.begin() as conn:
                conn.execute(COUNTERS.delete().where(COUNTERS.c.expires_at <= now))
        return int(count)

    def get(self, key: str) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(
                COUNTERS.select()
                .with_only_columns(COUNTERS.c.count)
                .where(COUNTERS.c.key == key, COUNTERS.c.expires_at > time.time())
            ).scalar()
        return int(count or 0)

    def get_expiry(self, key: str) -> float:
        with self.engine.connect() as conn:
            expires = conn.execute(
                COUNTERS.select().with_only_columns(COUNTERS.c.expires_at).where(COUNTERS.c.key == key)
            ).scalar()
        return float(expires) if expires is not None and expires > time.time() else time.time()

    def check(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def reset(self) -> int | None:
        with self.engine.begin() as conn:
            return conn.execute(COUNTERS.delete()).rowcount

    def clear(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(COUNTERS.delete().where(COUNTERS.c.key == key))


def storage_uri(settings: Settings) -> str:
    """Where the counters live for ``settings``: the broker's Redis, else SQL."""
    broker = settings.broker_url
    if broker.startswith(("redis://", "rediss://")):
        return broker
    if is_sqlite(settings.database_url):
        database = make_url(settings.database_url).database
        folder = Path(database).parent if database and database != ":memory:" else settings.home
        return f"{SQL_SCHEME}+sqlite:///{folder / 'limits.db'}"
    return f"{SQL_SCHEME}+{settings.database_url}"


def _rate_key() -> str:
    principal = g.get("principal")
    if principal is not None and principal.owner_id != "anonymous":
        return f"key:{principal.owner_id}"
    return f"addr:{request.remote_addr}"


limiter = Limiter(key_func=_rate_key, headers_enabled=False, strategy="fixed-window")


def retry_after_seconds() -> int:
    """Seconds until the limit that was just hit resets."""
    current = limiter.current_limit
    if current is None:
        return 1
    return max(1, math.ceil(current.reset_at - time.time()))


def api_limit() -> str:
    limit: str = current_app.extensions["easel"].settings.rate_limit
    return limit


def submit_limit() -> str:
    limit: str = current_app.extensions["easel"].settings.submit_rate_limit
    return limit


def accepted(response: Response) -> bool:
    """Count a submission against the quota only when it was accepted."""
    return response.status_code < 400


def _auth_failure_item() -> RateLimitItem:
    return parse(current_app.extensions["easel"].settings.auth_failure_limit)


def auth_blocked_for() -> int | None:
    """Seconds the calling address must wait before authenticating again, or ``None``."""
    item = _auth_failure_item()
    try:
        strategy = limiter.limiter
        if strategy.test(item, "auth-failures", request.remote_addr or "-"):
            return None
        reset = strategy.get_window_stats(item, "auth-failures", request.remote_addr or "-").reset_time
    except Exception as exc:  # storage away: never fail a request because a counter is
        log.warning("auth failure limit not checked: %s", exc)
        return None
    return max(1, math.ceil(reset - time.time()))


def record_auth_failure() -> None:
    """Count one failed authentication from the calling address."""
    try:
        limiter.limiter.hit(_auth_failure_item(), "auth-failures", request.remote_addr or "-")
    except Exception as exc:
        log.warning("auth failure not counted: %s", exc)


def init_app(app: Flask, settings: Settings) -> None:
    app.config["RATELIMIT_STORAGE_URI"] = storage_uri(settings)
    # Storage down or restarting: count in this process's memory until it answers again
    # (checked with backoff), and never fail a request because the counter is away.
    app.config["RATELIMIT_IN_MEMORY_FALLBACK_ENABLED"] = True
    app.config["RATELIMIT_SWALLOW_ERRORS"] = True
    limiter.init_app(app)
    # The limiter is one object per process: an app built after another's storage failed
    # (tests build many) starts on its own new storage, not on the old one's fallback.
    limiter._storage_dead = False
