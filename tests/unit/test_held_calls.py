"""Held calls (``easel.web.held_calls``): the per-key bound across processes, the
per-process bound, the keeper that wakes waiting calls, and the surfaces' answers past a
bound (``Prefer: wait`` falls back to a plain 202; OpenAI and AUTOMATIC1111 answer 429
and record no job). SQLite, no server; the real gunicorn is in
tests/integration/test_held_calls.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from easel.shared.db import session_scope
from easel.shared.models import ApiKey, Job, utcnow
from easel.shared.models import HeldCall as HeldCallRow
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.held_calls import (
    LOOK_SECONDS,
    MAX_LOOK_SECONDS,
    STALE_HEARTBEATS,
    HeldCall,
    HeldCalls,
    TooManyHeldCalls,
    look_interval,
)
from tests.factories import make_key, migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path,
        sync_timeout_seconds=30,
        max_held_calls_per_key=2,
        submit_rate_limit="1000/minute",
        rate_limit="1000/minute",
    )


@pytest.fixture
def processes(settings: Settings) -> Iterator[tuple[HeldCalls, HeldCalls]]:
    """Two web processes' registries over one database."""
    one = HeldCalls(lambda: session_scope(settings.database_url), 2, 3, heartbeat=15)
    two = HeldCalls(lambda: session_scope(settings.database_url), 2, 3, heartbeat=15)
    yield one, two
    for calls in (one, two):  # no keeper thread outlives its test
        calls.close()
        assert calls.count() == 0


def submit(client: FlaskClient, key: str) -> str:
    response = client.post(
        "/api/v1/jobs",
        json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.json
    job_id: str = response.json["id"]
    return job_id


def test_the_per_key_bound_counts_every_process(processes: tuple[HeldCalls, HeldCalls]) -> None:
    one, two = processes
    first = one.take("wait", "alice", "j1")
    second = two.take("stream", "alice", "j2")
    with pytest.raises(TooManyHeldCalls) as refused:
        one.take("openai", "alice", None)
    assert refused.value.status == 429 and refused.value.retry_after
    assert "EASEL_MAX_HELD_CALLS_PER_KEY" in str(refused.value)
    bob = two.take("a1111", "bob", None)  # another key is not affected
    one.release(first)  # free at once
    third = two.take("wait", "alice", "j3")
    for process, call in ((two, second), (two, bob), (two, third)):
        process.release(call)
    assert one.count() == two.count() == 0


def test_the_per_process_bound(processes: tuple[HeldCalls, HeldCalls]) -> None:
    one, _ = processes
    calls = [one.take("wait", f"key-{n}", f"j{n}") for n in range(3)]
    with pytest.raises(TooManyHeldCalls) as refused:
        one.take("wait", "key-9", "j9")
    assert "EASEL_MAX_HELD_CALLS_PER_PROCESS" in str(refused.value)
    one.release(calls[0])
    one.release(one.take("wait", "key-9", "j9"))
    for call in calls[1:]:
        one.release(call)


def test_a_dead_processs_rows_stop_counting(
    settings: Settings, processes: tuple[HeldCalls, HeldCalls]
) -> None:
    one, two = processes
    one.take("wait", "alice", "j1")
    one.take("wait", "alice", "j2")  # then the process dies: its rows stay
    with pytest.raises(TooManyHeldCalls):
        two.take("wait", "alice", "j3")
    old = utcnow() - timedelta(seconds=15 * STALE_HEARTBEATS + 1)
    with session_scope(settings.database_url) as session:
        session.execute(update(HeldCallRow).values(seen_at=old))
        session.commit()
    two.release(two.take("wait", "alice", "j3"))


def test_the_keeper_wakes_a_waiting_call_when_its_job_finishes(
    client: FlaskClient, settings: Settings, processes: tuple[HeldCalls, HeldCalls]
) -> None:
    one, _ = processes
    job_id = submit(client, make_key(settings, "a"))
    with one.held("wait", "alice", job_id) as call:
        assert not call.wait_finished(0.3, lambda: False)  # queued: the wait runs out
        assert call.state is not None and call.state[0] == "queued"
        finisher = threading.Timer(0.3, finish, (settings, job_id))
        finisher.start()
        assert call.wait_finished(30, lambda: False)  # woken by the keeper's look
        finisher.join()
        assert call.state is not None and call.state[0] == "succeeded"
    with one.held("wait", "alice", job_id) as call:
        gone = threading.Event()
        assert not call.wait_finished(0.3, gone.is_set) or call.finished.is_set()
        gone.set()
        assert call.wait_finished(30, gone.is_set)  # already finished: no wait


def test_the_keeper_nudges_a_queued_call_when_its_queue_moves(
    client: FlaskClient, settings: Settings, processes: tuple[HeldCalls, HeldCalls]
) -> None:
    """A queued job's row does not change when the jobs ahead of it go, but its position
    does: the keeper wakes the call when the model's queue (``queue_turns``) moves."""
    one, _ = processes
    key = make_key(settings, "a")
    ahead = submit(client, key)
    mine = submit(client, key)
    with one.held("stream", "alice", mine) as call:
        assert call.wait_change(30)  # the first look: the job's state
        assert not call.wait_change(0.5)  # nothing moves: no wake-up
        canceled = client.post(f"/api/v1/jobs/{ahead}/cancel", headers={"Authorization": f"Bearer {key}"})
        assert canceled.status_code == 200, canceled.json  # the job ahead leaves the queue
        assert call.wait_change(30)  # nudged: the position may have changed
        assert call.state is not None and call.state[0] == "queued"  # its own row did not


def test_a_gone_client_ends_the_wait(processes: tuple[HeldCalls, HeldCalls]) -> None:
    one, _ = processes
    with one.held("wait", "alice", None) as call:  # no job to watch: only the client ends it
        left = threading.Timer(0.2, lambda: None)
        left.start()
        assert not call.wait_finished(60, lambda: not left.is_alive())
    assert one.count() == 0


def test_a_job_set_while_the_keeper_reads_is_not_taken_for_gone(
    client: FlaskClient, settings: Settings
) -> None:
    """The OpenAI and AUTOMATIC1111 calls take their slot, then submit and set the job:
    a look already under way must not read the new job as missing (finished)."""
    job_id = submit(client, make_key(settings, "a"))
    pending: list[HeldCall] = []

    @contextmanager
    def sessions_that_submit() -> Iterator[Session]:
        for call in pending:
            call.job_id = job_id  # the job is set while the keeper's query runs
        with session_scope(settings.database_url) as session:
            yield session

    calls = HeldCalls(sessions_that_submit, 2, 3, heartbeat=15)
    with calls.held("openai", "alice", None) as call:
        pending.append(call)
        assert not call.wait_finished(0.5, lambda: False)  # still queued: not finished
        assert call.state is not None and call.state[0] == "queued"


def finish(settings: Settings, job_id: str) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
        session.commit()


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def held_rows(settings: Settings) -> list[HeldCallRow]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(HeldCallRow)))


def test_past_the_bound_prefer_wait_answers_a_plain_202(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "a")
    app_calls: HeldCalls = client.application.extensions["easel"].held_calls
    taken = [app_calls.take("stream", _owner(settings, "a"), f"other-{n}") for n in range(2)]
    response = client.post(
        "/api/v1/jobs",
        json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
        headers={"Authorization": f"Bearer {key}", "Prefer": "wait=30"},
    )
    assert response.status_code == 202 and response.json["status"] == "queued"
    assert "Preference-Applied" not in response.headers  # no hold: answered at once
    for call in taken:
        app_calls.release(call)
    assert held_rows(settings) == []


@pytest.mark.parametrize(
    ("path", "body", "code_at"),
    [
        ("/v1/images/generations", {"prompt": "p", "size": "64x64"}, lambda j: j["error"]["code"]),
        ("/sdapi/v1/txt2img", {"prompt": "p", "width": 64, "height": 64}, lambda j: j["error"]),
    ],
)
def test_past_the_bound_openai_and_a1111_answer_429_and_record_no_job(
    client: FlaskClient, settings: Settings, path: str, body: dict[str, object], code_at: object
) -> None:
    key = make_key(settings, "a")
    app_calls: HeldCalls = client.application.extensions["easel"].held_calls
    taken = [app_calls.take("wait", _owner(settings, "a"), f"other-{n}") for n in range(2)]
    response = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 429, response.json
    assert response.headers["Retry-After"] == "5"
    assert "EASEL_MAX_HELD_CALLS_PER_KEY" in response.get_data(as_text=True)
    assert callable(code_at) and code_at(response.json)
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(Job)).all() == []
    for call in taken:
        app_calls.release(call)


def _owner(settings: Settings, name: str) -> str:
    """The owner id of the key named ``name`` (the held-call bound is per owner)."""
    with session_scope(settings.database_url) as session:
        owner: str = session.scalars(select(ApiKey.id).where(ApiKey.name == name)).one()
    return owner


def test_the_keeper_looks_less_often_past_a_few_hundred_calls() -> None:
    """A look reads every held job, so past ``LOOK_CALLS`` it comes less often in
    proportion, and never less often than ``MAX_LOOK_SECONDS``."""
    assert look_interval(0) == look_interval(250) == LOOK_SECONDS
    assert look_interval(500) == pytest.approx(2 * LOOK_SECONDS)
    assert look_interval(750) == pytest.approx(3 * LOOK_SECONDS)
    assert look_interval(100_000) == MAX_LOOK_SECONDS


def test_a_web_worker_freezes_what_it_loaded_and_collects_fully_less_often() -> None:
    """gunicorn's ``post_worker_init`` (``easel web``'s config): the loaded app is out of
    the full collections' reach, and those come a tenth as often (short, rare pauses for
    a process holding many calls)."""
    import gc

    from easel.web import gunicorn_conf

    before = gc.get_threshold()
    try:
        gunicorn_conf.post_worker_init(object())
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (before[0], before[1], gunicorn_conf.FULL_COLLECTION_EVERY)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
