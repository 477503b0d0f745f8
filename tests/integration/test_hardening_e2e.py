"""Issue 16 on real servers: the queued cap under concurrency on PostgreSQL, and limits
and gunicorn's own errors on a real `easel web` with several processes (embedded
defaults: SQLite, no Redis). The in-process checks are in tests/unit/test_hardening.py.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from easel.migrations.upgrade import upgrade
from easel.shared.db import engine_for, session_scope
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.keys import create_key
from easel.web.limits import SqlStorage
from tests.factories import inputs_in_storage_and_rows, make_key, migrated_settings, simultaneous_statuses

ROOT = Path(__file__).resolve().parents[2]


def _png(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), "gray").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_concurrent_submissions_respect_the_queued_cap_on_postgres(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """Row 3: EASEL_MAX_QUEUED_PER_KEY=2, 8 simultaneous submissions by one key on
    PostgreSQL: exactly 2 are accepted, the others answered 429."""
    settings = migrated_settings(
        home=tmp_path,
        database_url=fresh_postgres_url,
        max_queued_per_key=2,
        rate_limit="1000/minute",
        submit_rate_limit="1000/minute",
    )
    key = make_key(settings, "racer")
    app = create_app(settings)
    body = {"prompt": "p", "width": 64, "height": 64, "steps": 4, "type": "img2img", "image": _png(256)}
    statuses = simultaneous_statuses(app, body, {"Authorization": f"Bearer {key}"})
    stored, named = inputs_in_storage_and_rows(settings)  # a refused one leaves no input behind
    engine_for(settings.database_url).dispose()
    assert statuses == [202, 202] + [429] * 6, statuses
    assert len(named) == 2 and stored == named, (stored, named)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_web(home: Path, env: dict[str, str], name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (home.parent / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "easel.cli", "web"],
        env={**env, "EASEL_PORT": str(port)},
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process, f"http://127.0.0.1:{port}"


def _wait_healthy(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=2).ok:
                return
        except requests.RequestException:  # not listening yet, or still booting its workers
            pass
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"easel web at {base} did not answer /healthz in 60 s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], str, Path]]:
    """Two `easel web` servers (gunicorn, 2 processes each) on one embedded home (SQLite,
    no Redis), authentication on, a rate limit of 12 requests a minute: their base URLs,
    a key and the home folder."""
    home = tmp_path_factory.mktemp("hardening-web") / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EASEL_")},
        "EASEL_HOME": str(home),
        "EASEL_WEB_WORKERS": "2",
        "EASEL_RATE_LIMIT": "12/minute",
        "EASEL_AUTH_FAILURE_LIMIT": "1000/minute",
        "EASEL_LOG_FORMAT": "text",
    }
    settings = Settings(home=home)
    settings.ensure_home()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        key = create_key(session, "web")[1]
    engine_for(settings.database_url).dispose()
    servers = [_start_web(home, env, name) for name in ("web-a", "web-b")]
    try:
        for (process, base), name in zip(servers, ("web-a", "web-b"), strict=True):
            _wait_healthy(process, base, home.parent / f"{name}.log")
        yield [base for _, base in servers], key, home
    finally:
        for process, _ in servers:
            os.killpg(process.pid, signal.SIGTERM)
        for process, _ in servers:
            process.wait(30)


def test_limits_hold_across_servers_and_processes(web: tuple[list[str], str, Path]) -> None:
    """Row 8: 36 requests by one key, alternating between two servers (each a gunicorn
    with 2 processes), each on a new connection: exactly the 12 of the limit succeed in
    all, not 12 per process or per server."""
    bases, key, _ = web
    statuses = []
    for attempt in range(36):
        with requests.Session() as fresh:
            response = fresh.get(
                f"{bases[attempt % 2]}/api/v1/jobs", headers={"Authorization": f"Bearer {key}"}
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
    assert statuses.count(200) == 12 and statuses.count(429) == 24, statuses


def test_gunicorn_errors_use_the_error_shape(web: tuple[list[str], str, Path]) -> None:
    """Row 12: gunicorn answers an oversized header itself (431): in JSON, in the shape."""
    bases, _, _ = web
    response = requests.get(f"{bases[0]}/healthz", headers={"X-Big": "a" * 70_000})
    assert response.status_code == 431
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "request_header_fields_too_large" and error["details"] == []


def test_running_stack_keeps_its_state_private(web: tuple[list[str], str, Path]) -> None:
    """Row 13, on the running server: the home, database and counters are the owner's only."""
    _, _, home = web
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("easel.db", "limits.db", "secret_key"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


def test_sql_limit_counters_on_postgres(fresh_postgres_url: str) -> None:
    """Row 8: without Redis on a PostgreSQL stack, the counters are a table of the database
    that two storages (two processes) count in together."""
    first, second = SqlStorage(f"easelsql+{fresh_postgres_url}"), SqlStorage(f"easelsql+{fresh_postgres_url}")
    try:
        assert [first.incr("k", 60), second.incr("k", 60), first.incr("k", 60)] == [1, 2, 3]
        assert second.get("k") == 3 and time.time() < second.get_expiry("k") <= time.time() + 60
        assert first.incr("gone", 0) == 1 and first.incr("gone", 60) == 1  # an expired window restarts
    finally:
        first.engine.dispose()
        second.engine.dispose()
