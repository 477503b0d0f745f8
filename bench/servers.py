"""PostgreSQL, Redis and S3 for the benchmarks and the tests.

The configured servers (``EASEL_TEST_PG``: a PostgreSQL URL whose user may create
databases, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``;
``EASEL_TEST_REDIS``: a Redis URL, default ``redis://127.0.0.1:6379/0``) are used when
they serve. When nothing listens there, or the server refuses (a distribution's default
cluster with password logins, no database ``test``), ``postgres_server`` and
``redis_server`` start private ones from the installed server binaries (Debian's
``postgresql`` and ``redis-server`` packages) on free ports and say so on stderr, so a
fresh machine needs no running or configured service.

Each holder then takes a database of its own (``temporary_database``) and a Redis
database number of its own (``claimed_redis_db``), so runs never see each other's
leftovers. ``PrivateRedis`` / ``PrivatePostgres`` are also what the chaos run and the
outage tests stop, flush and restart.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.processes import free_port, wait_for

PG_ADMIN_URL = os.environ.get("EASEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("EASEL_TEST_REDIS", "redis://127.0.0.1:6379/0")
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port), timeout=timeout):
            return True
    except OSError:
        return False


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- private servers ---------------------------------------------------------------------


class PrivateRedis:
    """``redis-server`` on a free port with no persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(redis.Redis(port=self.port).ping, 20, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def restart_empty(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()


def postgres_binaries() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest, else the ones on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed "
            "(Debian: apt-get install postgresql)"
        )
    return Path(initdb).parent


class PrivatePostgres:
    """A PostgreSQL cluster made by ``initdb`` in a temporary folder (trust auth), on a
    free port. As root it runs as the ``postgres`` user (PostgreSQL refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="easel-pg-"))
        self.data = self.root / "data"
        self.bin = postgres_binaries()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.root, "postgres")
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _say(message: str) -> None:
    print(f"[easel servers] {message}", file=sys.stderr, flush=True)


def postgres_refusal(admin_url: str) -> str | None:
    """Why the server at ``admin_url`` cannot serve the tests (nothing listens, the login
    or the database is refused), or ``None`` when it can."""
    if not answers(admin_url):
        return "nothing answers"
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"it refuses: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()
    return None


def redis_refusal(url: str) -> str | None:
    """Why the Redis at ``url`` cannot serve the tests, or ``None`` when it can."""
    if not answers(url):
        return "nothing answers"
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        return f"it refuses: {exc}"
    finally:
        client.close()
    return None


@contextlib.contextmanager
def _configured_or_private(
    url: str,
    refusal: Callable[[str], str | None],
    private: Callable[[], PrivatePostgres | PrivateRedis],
    what: str,
) -> Iterator[str]:
    """``url`` when its server serves, else a ``private()`` server started for the block
    and ended on the way out (and a line on stderr that says why): its URL."""
    why = refusal(url)
    if why is None:
        yield url
        return
    server = private()
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port}"  # no password in the line
    _say(f"{what} at {where}: {why}; starting a private one on port {server.port}")
    try:
        yield server.start().url
    finally:
        server.destroy()


def postgres_server(admin_url: str = PG_ADMIN_URL) -> contextlib.AbstractContextManager[str]:
    """A URL of a PostgreSQL server whose user may create databases: ``admin_url`` when
    it lets us in, else a private cluster."""
    return _configured_or_private(admin_url, postgres_refusal, PrivatePostgres, "PostgreSQL")


def redis_server(url: str = REDIS_URL) -> contextlib.AbstractContextManager[str]:
    """A URL of a Redis server: ``url`` when it answers PING, else a private ``redis-server``."""
    return _configured_or_private(url, redis_refusal, PrivateRedis, "Redis")


# -- one holder's share of a server --------------------------------------------------------


@contextlib.contextmanager
def temporary_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new database on the server of ``admin_url``: its URL; dropped afterwards
    (connections still open to it are ended first)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = unique_name(prefix)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def claimed_redis_db(server_url: str = REDIS_URL) -> Iterator[str]:
    """A Redis database number (1-15) of the server of ``server_url`` claimed for this
    holder alone: its URL.

    The claim is a lock key in database 0; the claimed database is emptied before
    and after use, so no run sees another's leftovers.
    """
    import redis

    parts = urlsplit(server_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    lock = redis.Redis(host=host, port=port, db=0)
    token = uuid.uuid4().hex
    number = next(
        (n for n in range(1, 16) if lock.set(f"easel-test-lock:{n}", token, nx=True, ex=6 * 3600)), None
    )
    if number is None:
        raise RuntimeError(f"every Redis database 1-15 on {host}:{port} is claimed by another run")
    ours = redis.Redis(host=host, port=port, db=number)
    ours.flushdb()
    try:
        yield f"redis://{host}:{port}/{number}"
    finally:
        ours.flushdb()
        if lock.get(f"easel-test-lock:{number}") == token.encode():
            lock.delete(f"easel-test-lock:{number}")
        ours.close()
        lock.close()


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[tuple[str, Any]]:
    """moto's S3 server over HTTP on a free port, with ``bucket``: (endpoint, boto3 client).
    The credentials it takes are ``S3_CREDENTIALS``."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=bucket)
        yield endpoint, client
    finally:
        server.stop()
