"""Atomic claims on PostgreSQL (SKIP LOCKED) and SQLite (guarded UPDATE)."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.models import Job, JobStatus
from easel.worker.engine.claims import claim_batch
from tests.factories import insert_job


def add_job(sessions: sessionmaker[Session], status: JobStatus = JobStatus.QUEUED, **fields: Any) -> str:
    """A job of model "m" unless ``fields`` say otherwise (``age``: seconds since it was created)."""
    return insert_job(sessions, status=status.value, **{"model": "m", **fields})


def claim(sessions: sessionmaker[Session], worker: str = "w1", models: list[str] | None = None) -> Job | None:
    with sessions() as session:
        jobs = claim_batch(session, worker, models, max_images=1)
        return jobs[0] if jobs else None


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


def batch(
    sessions: sessionmaker[Session], max_images: int, worker: str = "w1", **kwargs: object
) -> list[Job]:
    with sessions() as session:
        return claim_batch(session, worker, None, max_images, **kwargs)  # type: ignore[arg-type]


def test_a_batch_takes_compatible_jobs_in_claim_order_up_to_max_images(
    sessions: sessionmaker[Session],
) -> None:
    same = [add_job(sessions, age=30 - i) for i in range(5)]
    add_job(sessions, age=40, width=128)  # oldest, but another batch key
    first = batch(sessions, max_images=4)
    assert [job.width for job in first] == [128]  # the head decides the key: oldest first
    second = batch(sessions, max_images=4)
    assert [job.id for job in second] == same[:4]
    assert {job.batch_id for job in second} != {None} and len({job.batch_id for job in second}) == 1
    assert {job.batch_size for job in second} == {4}
    assert {job.status for job in second} == {JobStatus.RUNNING.value}
    assert [job.id for job in batch(sessions, max_images=4)] == same[4:]


def test_a_claim_costs_the_same_statements_however_long_the_queue(sessions: sessionmaker[Session]) -> None:
    """A claim reads the queue's maintained order and a few index probes, writes the jobs
    in one ``UPDATE ... RETURNING`` (nothing is read back afterwards) and the queue's
    state: no more statements with 40 queued jobs than with 3."""

    def statements(queued: int) -> list[str]:
        ids = [add_job(sessions, age=1000 - i) for i in range(queued)]
        seen: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(" ".join(statement.split(None, 3)[:3]).upper())

        engine = sessions.kw["bind"]
        event.listen(engine, "before_cursor_execute", record)
        try:
            jobs = batch(sessions, max_images=4)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        assert [job.id for job in jobs] == ids[:4] and {job.batch_size for job in jobs} == {min(4, queued)}
        while batch(sessions, max_images=50):
            pass
        return [kind for kind in seen if kind.split()[0] in ("SELECT", "UPDATE", "INSERT", "DELETE")]

    few, many = statements(3), statements(40)
    assert [kind for kind in many if kind.startswith("UPDATE JOBS")] == ["UPDATE JOBS SET"]
    assert len(many) <= len(few) <= 10, (few, many)  # with 3, it also looks below for companions


def test_jobs_with_different_batch_keys_never_share_a_batch(sessions: sessionmaker[Session]) -> None:
    for i in range(6):
        add_job(sessions, age=i, scheduler=("ddim", "euler")[i % 2], width=(64, 64, 128)[i % 3])
    while claimed := batch(sessions, max_images=8):
        keys = {(job.scheduler, job.width) for job in claimed}
        assert len(keys) == 1, keys


def test_images_not_jobs_fill_a_batch(sessions: sessionmaker[Session]) -> None:
    big = add_job(sessions, age=3, num_images=3)
    too_big = add_job(sessions, age=2, num_images=2)
    small = add_job(sessions, age=1, num_images=1)
    claimed = batch(sessions, max_images=4)
    assert [job.id for job in claimed] == [big, small]
    assert {job.batch_size for job in claimed} == {4}
    assert [job.id for job in batch(sessions, max_images=4)] == [too_big]


def test_owners_take_turns_within_a_priority(sessions: sessionmaker[Session]) -> None:
    flood = [add_job(sessions, owner_id="flooder", age=100 - i) for i in range(20)]
    single = add_job(sessions, owner_id="other", age=1)
    order = [claim(sessions).id for _ in range(3)]  # type: ignore[union-attr]
    assert order == [flood[0], single, flood[1]]


def test_priority_beats_turns(sessions: sessionmaker[Session]) -> None:
    add_job(sessions, owner_id="a", age=10)
    urgent = add_job(sessions, owner_id="a", age=1, priority=3)
    assert claim(sessions).id == urgent  # type: ignore[union-attr]


def test_a_batch_waits_for_compatible_jobs(sessions: sessionmaker[Session]) -> None:
    add_job(sessions)
    late: list[str] = []
    timer = threading.Timer(0.2, lambda: late.append(add_job(sessions)))
    timer.start()
    claimed = batch(sessions, max_images=2, wait_seconds=30)
    timer.join()
    assert len(claimed) == 2 and claimed[1].id == late[0]  # it returned once full, not after 30 s
    assert {job.batch_size for job in claimed} == {2}


def test_concurrent_batch_claims_never_share_a_job(sessions: sessionmaker[Session]) -> None:
    job_ids = {add_job(sessions, age=i) for i in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while jobs := batch(sessions, max_images=3, worker=name):
            with lock:
                claimed.extend(job.id for job in jobs)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == sorted(job_ids)
