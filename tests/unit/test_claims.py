"""Atomic claims on PostgreSQL (SKIP LOCKED) and SQLite (guarded UPDATE)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine
from shared.migrate import upgrade
from shared.models import Job, JobStatus, utcnow
from worker.engine.claims import claim_next


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("fresh_postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def add_job(
    sessions: sessionmaker[Session],
    model: str = "m",
    priority: int = 0,
    age: float = 0.0,
    status: JobStatus = JobStatus.QUEUED,
) -> str:
    with sessions() as session:
        job = Job(
            type="txt2img",
            model=model,
            status=status.value,
            priority=priority,
            prompt="p",
            negative_prompt="",
            width=64,
            height=64,
            steps=2,
            guidance_scale=7.5,
            scheduler="ddim",
            seed=1,
            num_images=1,
            timings={},
            created_at=utcnow() - timedelta(seconds=age),
        )
        session.add(job)
        session.commit()
        return job.id


def claim(sessions: sessionmaker[Session], worker: str = "w1", models: list[str] | None = None) -> Job | None:
    with sessions() as session:
        return claim_next(session, worker, models)


def test_priority_then_age(sessions: sessionmaker[Session]) -> None:
    old_low = add_job(sessions, priority=0, age=30)
    new_high = add_job(sessions, priority=5, age=1)
    old_high = add_job(sessions, priority=5, age=20)
    order = [claim(sessions).id for _ in range(3)]  # type: ignore[union-attr]
    assert order == [old_high, new_high, old_low]
    assert claim(sessions) is None


def test_claim_marks_running_and_counts_attempts(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    job = claim(sessions, worker="host:1")
    assert job is not None and job.id == job_id
    assert job.status == JobStatus.RUNNING.value and job.attempts == 1
    assert job.worker_id == "host:1" and job.started_at is not None


def test_only_served_models_are_claimed(sessions: sessionmaker[Session]) -> None:
    other = add_job(sessions, model="other", age=10)
    mine = add_job(sessions, model="mine")
    assert claim(sessions, models=["mine"]).id == mine  # type: ignore[union-attr]
    assert claim(sessions, models=["mine"]) is None
    assert claim(sessions, models=None).id == other  # type: ignore[union-attr]


def test_claimed_and_finished_jobs_are_skipped(sessions: sessionmaker[Session]) -> None:
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.CANCELED, JobStatus.FAILED):
        add_job(sessions, status=status)
    assert claim(sessions) is None


def test_concurrent_workers_never_share_a_job(sessions: sessionmaker[Session]) -> None:
    job_ids = {add_job(sessions, age=i) for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := claim(sessions, worker=name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(job_ids)  # each exactly once
    with sessions() as session:
        attempts = session.query(Job.attempts).all()
    assert {a for (a,) in attempts} == {1}


def test_a_job_taken_between_select_and_update_is_not_claimed_twice(sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions)
    with sessions() as session:  # another worker wins the race
        session.execute(update(Job).where(Job.id == job_id).values(status="running"))
        session.commit()
    assert claim(sessions) is None
