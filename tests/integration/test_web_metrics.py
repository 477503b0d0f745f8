"""The web tier's Prometheus series, read from the database at scrape time, on SQLite
and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.models import Job, JobStatus, Worker, utcnow
from easel.shared.settings import Settings
from easel.shared.stats import rebuild, record_finished
from easel.web import create_app
from tests.factories import job_row, parse_metrics, value


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = (
        request.getfixturevalue("fresh_postgres_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'easel.db'}"
    )
    settings = Settings(home=tmp_path, database_url=url, worker_lost_after_seconds=30)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=utcnow().tzinfo)


def job(
    model: str,
    job_type: str,
    status: JobStatus,
    wait: float | None = None,
    run: float | None = None,
) -> Job:
    """A job row created at ``T0`` that started ``wait`` s later and ran ``run`` s."""
    started = T0 + timedelta(seconds=wait) if wait is not None else None
    finished = None
    if status.is_terminal:
        finished = started + timedelta(seconds=run or 0) if started else T0 + timedelta(seconds=1)
    return job_row(
        type=job_type,
        model=model,
        status=status.value,
        created_at=T0,
        started_at=started,
        finished_at=finished,
    )


def seed_rows(settings: Settings) -> None:
    """Jobs in every state. The finished ones are only counted, as their finishing
    transaction counts them (``record_finished``); their rows are absent, as after
    retention: the finished series come from maintained counters, not the history."""
    now = utcnow()
    finished = [
        job("tiny-sd", "txt2img", JobStatus.SUCCEEDED, wait=2.0, run=3.0),
        job("tiny-sd", "txt2img", JobStatus.SUCCEEDED, wait=0.3, run=0.4),
        job("tiny-sd", "img2img", JobStatus.FAILED, wait=40.0, run=1.5),
        job("tiny-sd", "txt2img", JobStatus.CANCELED),  # canceled while queued: never started
    ]
    with session_scope(settings.database_url) as session:
        for row in finished:
            assert row.finished_at is not None
            record_finished(session, row, row.status, row.finished_at)
        session.add_all(
            [
                job("tiny-sd", "txt2img", JobStatus.QUEUED),
                job("tiny-sd", "inpaint", JobStatus.RUNNING, wait=1.0),
                job("other", "txt2img", JobStatus.QUEUED),
            ]
        )
        common: dict[str, Any] = {"hostname": "h", "started_at": now - timedelta(hours=1)}
        session.add_all(
            [
                Worker(id="h:1", models=[], last_seen_at=now, **common),  # serves every model
                Worker(id="h:2", models=["tiny-sd"], last_seen_at=now, **common),
                Worker(id="h:3", models=["tiny-sd"], last_seen_at=now - timedelta(minutes=5), **common),
                Worker(id="h:4", models=["tiny-sd"], last_seen_at=now, stopped_at=now, **common),
            ]
        )


def test_web_metrics_count_jobs_queues_workers_and_durations(client: FlaskClient, settings: Settings) -> None:
    seed_rows(settings)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    s = parse_metrics(response.get_data(as_text=True))

    submitted = "easel_jobs_submitted_total"
    assert value(s, submitted, type="txt2img", model="tiny-sd") == 4
    assert value(s, submitted, type="img2img", model="tiny-sd") == 1
    assert value(s, submitted, type="inpaint", model="tiny-sd") == 1
    assert value(s, submitted, type="txt2img", model="other") == 1
    assert value(s, submitted, type="img2img", model="other") is None  # only configured models get zeros

    finished = "easel_jobs_finished_total"
    assert value(s, finished, status="succeeded", type="txt2img", model="tiny-sd") == 2
    assert value(s, finished, status="failed", type="img2img", model="tiny-sd") == 1
    assert value(s, finished, status="canceled", type="txt2img", model="tiny-sd") == 1
    assert value(s, finished, status="succeeded", type="inpaint", model="tiny-sd") == 0
    assert sum(v for (name, _), v in s.items() if name == finished) == 4

    assert value(s, "easel_jobs", status="queued", model="tiny-sd") == 1
    assert value(s, "easel_jobs", status="running", model="tiny-sd") == 1
    assert value(s, "easel_jobs", status="queued", model="other") == 1
    assert value(s, "easel_jobs", status="running", model="other") == 0
    assert value(s, "easel_queue_depth", model="tiny-sd") == 1
    assert value(s, "easel_queue_depth", model="other") == 1

    # live: h:1 (every model) and h:2; h:3 is silent, h:4 stopped
    assert value(s, "easel_workers", model="tiny-sd") == 2
    assert value(s, "easel_workers", model="other") == 1

    # the three finished jobs that started (waits 2, 0.3, 40; runs 3, 0.4, 1.5)
    wait = "easel_job_queue_wait_seconds"
    assert value(s, wait + "_count", model="tiny-sd") == 3
    assert value(s, wait + "_sum", model="tiny-sd") == pytest.approx(42.3, abs=1e-3)
    expected_wait = {"0.1": 0, "0.5": 1, "1.0": 1, "2.5": 2, "30.0": 2, "60.0": 3, "+Inf": 3}
    for le, n in expected_wait.items():
        assert value(s, wait + "_bucket", model="tiny-sd", le=le) == n, le
    run = "easel_job_run_seconds"
    assert value(s, run + "_count", model="tiny-sd") == 3
    assert value(s, run + "_sum", model="tiny-sd") == pytest.approx(4.9, abs=1e-3)
    expected_run = {"0.25": 0, "0.5": 1, "1.0": 1, "2.5": 2, "5.0": 3, "+Inf": 3}
    for le, n in expected_run.items():
        assert value(s, run + "_bucket", model="tiny-sd", le=le) == n, le
    assert value(s, run + "_count", model="other") is None  # nothing of it finished


def test_web_metrics_on_an_empty_database(client: FlaskClient) -> None:
    s = parse_metrics(client.get("/metrics").get_data(as_text=True))
    assert value(s, "easel_jobs_submitted_total", type="txt2img", model="tiny-sd") == 0
    assert value(s, "easel_queue_depth", model="tiny-sd") == 0
    assert value(s, "easel_workers", model="tiny-sd") == 0


def test_rebuild_counts_the_history_like_the_finishing_transactions(settings: Settings) -> None:
    """Migration 0006 fills the statistics from the jobs that finished before it."""
    from sqlalchemy import select

    from easel.shared.models import JobCount, JobDuration

    def snapshot() -> tuple[list, list]:
        with session_scope(settings.database_url) as session:
            counts = session.execute(select(JobCount.model, JobCount.type, JobCount.status, JobCount.count))
            durations = session.execute(
                select(JobDuration.kind, JobDuration.model, JobDuration.bucket, JobDuration.count)
            )
            return sorted(counts.all()), sorted(durations.all())

    rows = [
        job("tiny-sd", "txt2img", JobStatus.SUCCEEDED, wait=2.0, run=3.0),
        job("tiny-sd", "img2img", JobStatus.FAILED, wait=40.0, run=1.5),
        job("tiny-sd", "txt2img", JobStatus.CANCELED),
        job("tiny-sd", "txt2img", JobStatus.QUEUED),
    ]
    with session_scope(settings.database_url) as session:
        session.add_all(rows)
        for row in rows:
            if row.finished_at is not None:
                record_finished(session, row, row.status, row.finished_at)
    maintained = snapshot()
    assert maintained[0] and maintained[1]
    with session_scope(settings.database_url) as session:
        rebuild(session)
    assert snapshot() == maintained
