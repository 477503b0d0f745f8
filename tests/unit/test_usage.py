"""Usage per key (``shared.usage``): the daily rows the finishing transition keeps, the
REST read with two keys, the daily quotas' 429 on every submit surface, ``/admin`` and
``easel usage`` (SQLite, a local folder, authentication on)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine, session_scope
from easel.shared.errors import QuotaExceeded
from easel.shared.models import ApiKey, Job, JobStatus, KeyUsage, utcnow
from easel.shared.settings import Settings
from easel.shared.transitions import Ending, claim, finish_all
from easel.shared.usage import check_quota, next_reset, parse_range, rebuild, today
from easel.web import create_app
from tests.factories import enqueue, fetch, job_row, make_key, make_runner, migrated_settings

TODAY = datetime.now(UTC).date()


def rows(session: Session) -> dict[str, tuple[date, int, int, float]]:
    found = session.execute(
        select(KeyUsage.owner_key, KeyUsage.day, KeyUsage.jobs, KeyUsage.images, KeyUsage.gpu_seconds)
    ).all()
    return {owner: (day, jobs, images, round(seconds, 3)) for owner, day, jobs, images, seconds in found}


def run_and_finish(
    sessions: Any, ids: list[str], seconds: float, status: JobStatus = JobStatus.SUCCEEDED
) -> None:
    """Claim ``ids`` as one batch and end each with ``gpu_seconds`` ``seconds``, as a worker would."""
    with sessions() as session:
        claim(session, ids, "w1", "batch-1")
        session.commit()
        finish_all(session, "w1", [Ending(i, status, {"gpu_seconds": seconds}) for i in ids])


# ---- the finishing transition -----------------------------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'u.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def test_finishing_a_batch_adds_its_successes_to_each_owners_day_once(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        jobs = [
            job_row(owner_id="alice", num_images=2),
            job_row(owner_id="alice", num_images=1),
            job_row(owner_id="bob", num_images=4),  # fails: not counted
            job_row(owner_id="bob", num_images=1),  # taken by another worker: not ours to end
            job_row(owner_id=None, num_images=1),
        ]
        session.add_all(jobs)
        session.commit()
        ids = [job.id for job in jobs]
        claim(session, ids, "w1", "batch-1", 9)
        session.execute(Job.__table__.update().where(Job.id == ids[3]).values(worker_id="w2"))
        session.commit()
    endings = [
        Ending(ids[0], JobStatus.SUCCEEDED, {"gpu_seconds": 2.0}),
        Ending(ids[1], JobStatus.SUCCEEDED, {"gpu_seconds": 1.0}),
        Ending(ids[2], JobStatus.FAILED, {"gpu_seconds": 4.0}, error=("oom", "out of memory")),
        Ending(ids[3], JobStatus.SUCCEEDED, {"gpu_seconds": 1.0}),
        Ending(ids[4], JobStatus.SUCCEEDED, {}),  # no pipeline time recorded: 0 GPU-seconds
    ]
    with sessions() as session:
        statements: list[str] = []
        event.listen(session.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        got = finish_all(session, "w1", endings)
        assert got == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED, None, JobStatus.SUCCEEDED]
        # In the finishing transaction, one upsert per (owner, day), never a read of jobs.
        writes = [s for s in statements if "key_usage" in s]
        assert len(writes) == 2 and all(s.lstrip().upper().startswith("INSERT") for s in writes)
        assert rows(session) == {"alice": (TODAY, 2, 3, 3.0), "": (TODAY, 1, 1, 0.0)}
        # Ending them again changes nothing: the guard holds, so the rows do not move.
        assert finish_all(session, "w1", endings[:2]) == [None, None]
        assert rows(session)["alice"] == (TODAY, 2, 3, 3.0)
        # rebuild (migration 0015) finds the same jobs and images from the rows.
        rebuild(session)
        session.commit()
        assert rows(session) == {"alice": (TODAY, 2, 3, 0.0), "": (TODAY, 1, 1, 0.0)}


def test_a_quota_check_reads_one_row_by_its_key_and_names_the_reset(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, quota_images_per_day=4, quota_gpu_seconds_per_day=10.0)
    now = datetime(2026, 12, 8, 23, 0, tzinfo=UTC)
    with sessions() as session:
        session.add(KeyUsage(owner_key="alice", day=now.date(), jobs=2, images=3, gpu_seconds=9.5))
        session.commit()
        statements: list[str] = []
        event.listen(session.get_bind(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        check_quota(session, settings, "alice", 1, now)  # 3 + 1 <= 4
        assert (
            len(statements) == 1 and "FROM key_usage \n" in statements[0] and "FROM jobs" not in statements[0]
        )
        assert "WHERE key_usage.owner_key = ? AND key_usage.day = ?" in statements[0]
        with pytest.raises(QuotaExceeded) as refused:
            check_quota(session, settings, "alice", 2, now)
        assert "3 of its 4 images today (EASEL_QUOTA_IMAGES_PER_DAY)" in refused.value.message
        assert "resets at 2026-12-09 00:00 UTC" in refused.value.message
        assert refused.value.retry_after == 3601
        check_quota(session, settings, "bob", 4, now)  # another key: its own row (none)
        check_quota(session, settings, "alice", 1, now + timedelta(hours=1))  # a new day
        session.add(KeyUsage(owner_key="carol", day=now.date(), jobs=1, images=1, gpu_seconds=10.0))
        with pytest.raises(QuotaExceeded, match="EASEL_QUOTA_GPU_SECONDS_PER_DAY"):
            check_quota(session, settings, "carol", 1, now)
        assert today(session, "carol", now).gpu_seconds == 10.0
    assert next_reset(now) == datetime(2026, 12, 9, tzinfo=UTC)


def test_ranges_default_to_the_month_and_refuse_bad_days() -> None:
    now = datetime(2026, 12, 8, 5, tzinfo=UTC)
    assert parse_range(None, None, now) == (date(2026, 12, 1), date(2026, 12, 8))
    assert parse_range("2026-11-30", "2026-12-02", now) == (date(2026, 11, 30), date(2026, 12, 2))
    for start, end in (("2026-12-09", "2026-12-08"), ("2026-12-1", None), ("2024-01-01", "2026-01-01")):
        with pytest.raises(Exception, match=r"from|to"):
            parse_range(start, end, now)


def test_a_batch_shares_its_pipeline_seconds_by_images(env: dict[str, Any]) -> None:
    runner = make_runner(env)
    runner.max_batch_images = 3
    ids = [enqueue(env, num_images=2), enqueue(env, num_images=1)]
    runner.run_next()
    jobs = [fetch(env, job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert jobs[0].batch_id == jobs[1].batch_id
    shares = [job.timings["gpu_seconds"] for job in jobs]
    generate = jobs[0].timings["generate_seconds"]
    assert shares[0] == pytest.approx(2 * shares[1], abs=0.002)
    assert sum(shares) == pytest.approx(generate, abs=0.002)
    with env["sessions"]() as session:
        day, count, images, seconds = rows(session)[""]
        assert (day, count, images) == (TODAY, 2, 3) and seconds == pytest.approx(sum(shares), abs=0.002)


# ---- REST, /admin and the CLI with two keys ------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path,
        submit_rate_limit="1000/minute",
        rate_limit="1000/minute",
        quota_images_per_day=3,
    )


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_id(settings: Settings, name: str) -> str:
    with session_scope(settings.database_url) as session:
        return session.scalars(select(ApiKey.id).where(ApiKey.name == name)).one()


def submit(client: FlaskClient, key: str, images: int = 1) -> Any:
    body = {"prompt": "p", "width": 64, "height": 64, "steps": 2, "num_images": images}
    return client.post("/api/v1/jobs", json=body, headers=bearer(key))


def sessions_of(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(make_engine(settings.database_url), expire_on_commit=False)


def test_usage_and_quotas_through_rest_with_two_keys(client: FlaskClient, settings: Settings) -> None:
    alice, bob, admin = (
        make_key(settings, "alice"),
        make_key(settings, "bob"),
        make_key(settings, "ops", True),
    )
    alice_id, bob_id = key_id(settings, "alice"), key_id(settings, "bob")
    db = sessions_of(settings)
    first = submit(client, alice, 2)
    assert first.status_code == 202, first.json
    run_and_finish(db, [first.json["id"]], 1.25)
    bobs = submit(client, bob, 1)
    run_and_finish(db, [bobs.json["id"]], 0.5)

    mine = client.get("/api/v1/usage", headers=bearer(alice)).json
    assert mine["key"] == alice_id and mine["to"] == TODAY.isoformat()
    assert mine["days"] == [
        {
            "day": TODAY.isoformat(),
            "key": alice_id,
            "name": "alice",
            "jobs": 1,
            "images": 2,
            "gpu_seconds": 1.25,
        }
    ]
    assert mine["total"] == {"jobs": 1, "images": 2, "gpu_seconds": 1.25}
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    past = client.get(f"/api/v1/usage?from={yesterday}&to={yesterday}", headers=bearer(alice)).json
    assert past["days"] == [] and past["total"]["images"] == 0
    assert client.get("/api/v1/usage", headers=bearer(bob)).json["total"]["images"] == 1
    refused = client.get(f"/api/v1/usage?key={alice_id}", headers=bearer(bob))
    assert refused.status_code == 403
    assert client.get("/api/v1/usage?from=yesterday", headers=bearer(bob)).status_code == 422
    assert client.get("/api/v1/usage?user=x", headers=bearer(bob)).status_code == 422
    assert client.get("/api/v1/usage").status_code == 401

    every = client.get("/api/v1/usage", headers=bearer(admin)).json
    assert every["key"] is None and {d["key"] for d in every["days"]} == {alice_id, bob_id}
    assert every["total"] == {"jobs": 2, "images": 3, "gpu_seconds": 1.75}
    one = client.get(f"/api/v1/usage?key={bob_id}", headers=bearer(admin)).json
    assert [d["name"] for d in one["days"]] == ["bob"]

    # Quota: 3 images a day. Alice used 2: a job of 2 more is refused, of 1 accepted.
    over = submit(client, alice, 2)
    assert over.status_code == 429, over.json
    assert over.json["error"]["code"] == "quota_exceeded"
    message = over.json["error"]["message"]
    assert "2 of its 3 images today (EASEL_QUOTA_IMAGES_PER_DAY)" in message
    assert "the quota resets at" in message and "00:00 UTC" in message
    assert 0 < int(over.headers["Retry-After"]) <= 86401
    last = submit(client, alice, 1)
    assert last.status_code == 202
    run_and_finish(db, [last.json["id"]], 0.25)
    assert submit(client, alice, 1).status_code == 429
    # The other surfaces go through the same check.
    openai = client.post(
        "/v1/images/generations", json={"prompt": "p", "size": "64x64", "steps": 2}, headers=bearer(alice)
    )
    assert openai.status_code == 429 and openai.json["error"]["code"] == "insufficient_quota"
    assert "EASEL_QUOTA_IMAGES_PER_DAY" in openai.json["error"]["message"]
    a1111 = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "p", "width": 64, "height": 64, "steps": 2},
        headers=bearer(alice),
    )
    assert a1111.status_code == 429 and "EASEL_QUOTA_IMAGES_PER_DAY" in a1111.get_data(as_text=True)
    # Bob's quota is his own; admin keys have none.
    assert submit(client, bob, 2).status_code == 202
    assert submit(client, admin, 3).status_code == 202
    with db() as session:
        assert session.scalar(select(Job.id).where(Job.owner_id == alice_id, Job.status == "queued")) is None

    page = client.get("/admin", headers=bearer(admin))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Usage per key" in html and f'data-key="{alice_id}"' in html and f'data-key="{bob_id}"' in html
    assert client.get("/admin", headers=bearer(alice)).status_code == 403


def test_a_gpu_seconds_quota_refuses_once_used_up(tmp_path: Path) -> None:
    settings = migrated_settings(home=tmp_path, quota_gpu_seconds_per_day=1.0)
    client = create_app(settings).test_client()
    alice = make_key(settings, "alice")
    first = submit(client, alice)
    assert first.status_code == 202
    assert submit(client, alice).status_code == 202  # nothing finished yet: nothing used
    run_and_finish(sessions_of(settings), [first.json["id"]], 1.5)
    over = submit(client, alice)
    assert over.status_code == 429
    assert "1.5 of its 1 GPU-seconds today (EASEL_QUOTA_GPU_SECONDS_PER_DAY)" in over.json["error"]["message"]


def test_easel_usage_prints_each_key_and_day(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from easel.cli import main
    from easel.shared.settings import get_settings

    make_key(settings, "alice"), make_key(settings, "bob")
    alice_id = key_id(settings, "alice")
    with session_scope(settings.database_url) as session:
        session.add(KeyUsage(owner_key=alice_id, day=TODAY, jobs=3, images=5, gpu_seconds=7.25))
        session.add(KeyUsage(owner_key=key_id(settings, "bob"), day=TODAY, jobs=1, images=1, gpu_seconds=0.5))
        old = TODAY - timedelta(days=40)
        session.add(KeyUsage(owner_key=alice_id, day=old, jobs=9, images=9, gpu_seconds=9.0))
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        everyone = CliRunner().invoke(main, ["usage"])
        assert everyone.exit_code == 0, everyone.output
        assert "alice" in everyone.output and "bob" in everyone.output
        assert everyone.output.splitlines()[-1].split()[-3:] == ["4", "6", "7.8"]
        prefix = alice_id  # by id (a prefix works as well)
        since = CliRunner().invoke(main, ["usage", "--key", prefix, "--from", old.isoformat()])
        assert since.exit_code == 0, since.output
        assert "bob" not in since.output
        assert since.output.splitlines()[-1].split()[-3:] == ["12", "14", "16.2"]
        bad = CliRunner().invoke(main, ["usage", "--from", "soon"])
        assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
    finally:
        get_settings.cache_clear()


def test_usage_is_in_the_openapi_document(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    assert "UsageReport" in document["components"]["schemas"]
    assert document["paths"]["/api/v1/usage"]["get"]["operationId"] == "getUsage"


def test_usage_rows_are_written_in_utc_days(sessions: sessionmaker[Session]) -> None:
    late = datetime(2026, 12, 8, 23, 59, 59, tzinfo=UTC)
    from easel.shared.usage import Used, record_all

    with sessions() as session:
        record_all(session, [Used("a", 1, 0.5, late), Used("a", 2, 0.5, late + timedelta(seconds=2))])
        session.commit()
        found = session.execute(select(KeyUsage.day, KeyUsage.images).order_by(KeyUsage.day)).all()
    assert [tuple(r) for r in found] == [(date(2026, 12, 8), 1), (date(2026, 12, 9), 2)]
    assert utcnow().tzinfo is UTC
