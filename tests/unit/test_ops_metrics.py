"""The web tier's series for the alerts (web/ops_metrics.py): ``easel_ready`` per
dependency and ``easel_workers_lost``, and ``/readyz`` reading the same checks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.models import HeldCall, Worker, utcnow
from easel.shared.settings import Settings
from easel.web import create_app
from tests.factories import parse_metrics, value


def test_each_dependency_ready_or_not_and_readyz_agrees(tmp_path: Path) -> None:
    """SQLite and the local folder answer; a broker on a closed port does not."""
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:9/0")
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    s = parse_metrics(client.get("/metrics").get_data(as_text=True))
    assert value(s, "easel_ready", dependency="database") == 1
    assert value(s, "easel_ready", dependency="storage") == 1
    assert value(s, "easel_ready", dependency="broker") == 0
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["broker"].startswith("unavailable: ")
    assert ready.get_json()["checks"]["database"] == "ok"


def test_workers_lost_are_those_gone_silent_without_a_clean_stop(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, worker_lost_after_seconds=30)
    upgrade(settings.database_url)
    now = utcnow()
    common: dict[str, Any] = {"hostname": "h", "models": [], "started_at": now - timedelta(hours=3)}
    with session_scope(settings.database_url) as session:
        session.add_all(
            [
                Worker(id="h:1", last_seen_at=now, **common),  # live
                Worker(id="h:2", last_seen_at=now - timedelta(minutes=5), **common),  # lost
                Worker(id="h:3", last_seen_at=now - timedelta(minutes=50), **common),  # lost
                Worker(id="h:4", last_seen_at=now - timedelta(minutes=5), stopped_at=now, **common),  # clean
                Worker(id="h:5", last_seen_at=now - timedelta(hours=2), **common),  # lost long ago
            ]
        )
    s = parse_metrics(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    assert value(s, "easel_workers_lost") == 2
    assert value(s, "easel_workers", model="demo-shapes") == 1


def test_held_calls_are_counted_by_kind_and_stale_rows_are_not(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, event_stream_heartbeat_seconds=10)
    upgrade(settings.database_url)
    now, stale = utcnow(), timedelta(seconds=31)
    with session_scope(settings.database_url) as session:
        session.add_all(
            [
                HeldCall(owner="a", job_id="j1", kind="stream", opened_at=now, seen_at=now),
                HeldCall(owner="a", job_id="j2", kind="stream", opened_at=now, seen_at=now),
                HeldCall(owner="b", job_id="", kind="openai", opened_at=now, seen_at=now),
                # a dead process's row, three heartbeats old: not counted
                HeldCall(owner="b", job_id="j3", kind="wait", opened_at=now, seen_at=now - stale),
            ]
        )
    s = parse_metrics(create_app(settings).test_client().get("/metrics").get_data(as_text=True))
    assert value(s, "easel_held_calls", kind="stream") == 2
    assert value(s, "easel_held_calls", kind="openai") == 1
    assert value(s, "easel_held_calls", kind="wait") == 0 and value(s, "easel_held_calls", kind="a1111") == 0


def test_readyz_tells_each_models_compile_path_from_the_live_workers_heartbeats(tmp_path: Path) -> None:
    """A worker's heartbeat publishes its compile states (``Heartbeat(compile_states=)``);
    ``/readyz`` shows those of live workers per model, not those of stopped ones."""
    from sqlalchemy.orm import sessionmaker

    from easel.shared.db import engine_for
    from easel.worker.heartbeat import Heartbeat

    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    states = {"tiny-sd": {"path": "compiling", "warm_up_seconds": None}}
    beat = Heartbeat(sessions, "h:1:a", ["tiny-sd"], "cuda:0", 5.0, compile_states=lambda: states)
    beat.beat()
    now = utcnow()
    with session_scope(settings.database_url) as session:
        session.add(
            Worker(  # stopped: not shown
                id="h:2:b",
                hostname="h",
                models=["tiny-sd"],
                compile={"tiny-sd": {"path": "compiled", "warm_up_seconds": 3.0}},
                started_at=now,
                last_seen_at=now,
                stopped_at=now,
            )
        )
    client = create_app(settings).test_client()
    assert client.get("/readyz").get_json()["compile"] == {"tiny-sd": {"h:1:a": states["tiny-sd"]}}
    states["tiny-sd"] = {"path": "compiled", "warm_up_seconds": 41.5}  # the compile finished
    beat.beat()
    answer = client.get("/readyz").get_json()
    assert answer["compile"]["tiny-sd"]["h:1:a"] == {"path": "compiled", "warm_up_seconds": 41.5}
    engine_for(settings.database_url).dispose()
