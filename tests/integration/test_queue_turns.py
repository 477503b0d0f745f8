"""The claim order's maintained state (``easel.shared.queue_turns``) stays what the job
rows say through every move into and out of the queue, heals rows written around it,
and holds up under concurrent claims, submits and cancels, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from easel.shared import queue_turns
from easel.shared.jobs import cancel_job
from easel.shared.models import Job, JobStatus, QueueTurn
from easel.shared.queue_turns import NEVER
from easel.shared.transitions import Ending, cancel, finish_all, recover_lost, requeue_finished
from easel.worker.engine.claims import claim_batch
from tests.factories import insert_job


def state(sessions: sessionmaker[Session]) -> dict[tuple[str, str, int, str], tuple[int, Any, Any]]:
    """The rows as kept: (model, type, priority, owner) -> (queued, head_created, head_id)."""
    with sessions() as session:
        rows = session.execute(select(QueueTurn)).scalars().all()
        return {
            (r.model, r.type, r.priority, r.owner_key): (r.queued, r.head_created, r.head_id) for r in rows
        }


def expected(sessions: sessionmaker[Session]) -> dict[tuple[str, str, int, str], tuple[int, Any, Any]]:
    """The rows as the job rows say they should be (``rebuild``, rolled back)."""
    with sessions() as session:
        queue_turns.rebuild(session)
        rows = session.execute(select(QueueTurn)).scalars().all()
        found = {
            (r.model, r.type, r.priority, r.owner_key): (r.queued, r.head_created, r.head_id) for r in rows
        }
        session.rollback()
        return found


def turns(sessions: sessionmaker[Session]) -> dict[str, datetime]:
    with sessions() as session:
        return {owner: turn for owner, turn in session.execute(select(QueueTurn.owner_key, QueueTurn.turn))}


def test_every_move_keeps_the_state_equal_to_the_rows(sessions: sessionmaker[Session]) -> None:
    def check() -> None:
        assert state(sessions) == expected(sessions)

    ids = [insert_job(sessions, model="m", owner_id=owner, age=50 - i) for i, owner in enumerate("aabbc")]
    ids.append(insert_job(sessions, model="m", owner_id=None, age=60))
    ids.append(insert_job(sessions, model="m", owner_id="a", age=1, priority=2))
    check()
    assert turns(sessions) == dict.fromkeys(["a", "b", "c", ""], NEVER)

    with sessions() as session:
        first = claim_batch(session, "w", ["m"], 1)
    assert [job.id for job in first] == [ids[-1]]  # priority first
    check()
    served = turns(sessions)
    assert served["a"] > NEVER and served["b"] == NEVER and served[""] == NEVER

    with sessions() as session:
        cancel_job(session, ids[2])  # b's head
    check()
    with sessions() as session:
        batch = claim_batch(session, "w", ["m"], 4)
    check()
    with sessions() as session:
        finish_all(session, "w", [Ending(job.id, JobStatus.FAILED, {}, ("e", "m")) for job in batch])
        assert requeue_finished(session, batch[0].id)  # back, as a new job
    check()
    with sessions() as session:
        lost = claim_batch(session, "w2", ["m"], 1)
        assert recover_lost(session, lost[0].id, "w2", 1, False, 3) is JobStatus.QUEUED  # back, as it was
    check()
    with sessions() as session:
        while claim_batch(session, "w", ["m"], 2):
            pass
    assert state(sessions) == {} == expected(sessions)


def test_rows_written_around_the_state_heal(sessions: sessionmaker[Session]) -> None:
    stale = insert_job(sessions, model="m", owner_id="a", age=10)
    with sessions() as session:  # taken by hand: its row still counts it
        session.execute(update(Job).where(Job.id == stale).values(status=JobStatus.RUNNING.value))
        session.commit()
    with sessions() as session:
        assert claim_batch(session, "w", ["m"], 1) == []
    assert state(sessions) == {}  # the claim found the row empty and removed it

    with sessions() as session:  # queued by hand: no row knows of it
        session.execute(update(Job).where(Job.id == stale).values(status=JobStatus.QUEUED.value))
        session.commit()
    with sessions() as session:
        assert [job.id for job in claim_batch(session, "w", ["m"], 1)] == [stale]  # found, rebuilt
    assert state(sessions) == {}


def test_concurrent_claims_submits_and_cancels_lose_nothing(sessions: sessionmaker[Session]) -> None:
    """Four workers claim batches while jobs of five owners arrive and some are canceled:
    every job ends claimed once or canceled, nobody waits for a deadlock, and the state is
    empty with the queue."""
    owners = ["a", "b", "c", "d", None]
    submitted: list[str] = []
    claimed: list[str] = []
    canceled: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()

    def submit() -> None:
        try:
            for i in range(120):
                job_id = insert_job(sessions, model="m", owner_id=owners[i % 5], priority=i % 3)
                with lock:
                    submitted.append(job_id)
                if i % 7 == 0:
                    with sessions() as session:
                        if cancel(session, job_id) is JobStatus.CANCELED:  # still queued: never runs
                            with lock:
                                canceled.append(job_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    def work(name: str) -> None:
        rng = random.Random(name)
        try:
            while True:
                with sessions() as session:
                    jobs = claim_batch(session, name, ["m"], rng.choice([1, 3]))
                    with lock:
                        claimed.extend(job.id for job in jobs)
                    if jobs:
                        finish_all(session, name, [Ending(job.id, JobStatus.SUCCEEDED, {}) for job in jobs])
                if not jobs:
                    if done.is_set():
                        return
                    time.sleep(0.01)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit)] + [
        threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(claimed) == len(set(claimed))
    assert sorted(claimed + canceled) == sorted(submitted)
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED.value)) == 0
    assert state(sessions) == {}
