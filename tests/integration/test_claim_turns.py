"""The claim order with several owners, pinned: priority, then the owner whose last job
started longest ago (or never), then age; batches take their companions in that order.

The expected sequences below were recorded from the claim code before the queue's order
became maintained state (the correlated ``max(started_at)`` per queued row, sorted), so
they show turns taken exactly as before, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from easel.shared.jobs import cancel_job
from easel.shared.models import JobStatus, utcnow
from easel.worker.engine.claims import claim_batch
from tests.factories import insert_job


def add(sessions: sessionmaker[Session], labels: dict[str, str], label: str, **fields: Any) -> str:
    job_id = insert_job(sessions, **{"model": "m", **fields})
    labels[job_id] = label
    return job_id


def take(sessions: sessionmaker[Session], labels: dict[str, str], max_images: int) -> list[str]:
    with sessions() as session:
        return [labels[job.id] for job in claim_batch(session, "w1", ["m"], max_images)]


def test_several_owners_take_turns_exactly_as_before(sessions: sessionmaker[Session]) -> None:
    labels: dict[str, str] = {}
    hour_ago = utcnow() - timedelta(hours=1)
    # History first: d's last job started an hour ago, c's is running since ten minutes.
    add(sessions, labels, "d-old", owner_id="d", status=JobStatus.SUCCEEDED.value, age=4000,
        started_at=hour_ago, finished_at=hour_ago + timedelta(seconds=5))  # fmt: skip
    add(sessions, labels, "c-run", owner_id="c", status=JobStatus.RUNNING.value, age=700,
        started_at=utcnow() - timedelta(minutes=10), worker_id="elsewhere")  # fmt: skip
    for i in range(6):  # a's flood, the oldest jobs
        add(sessions, labels, f"a{i}", owner_id="a", age=100 - i)
    add(sessions, labels, "b0", owner_id="b", age=90)
    add(sessions, labels, "b1-wide", owner_id="b", age=50, width=128)  # another batch key
    add(sessions, labels, "c0", owner_id="c", age=80)
    add(sessions, labels, "c1", owner_id="c", age=40)
    add(sessions, labels, "d0", owner_id="d", age=85)
    add(sessions, labels, "d1", owner_id="d", age=30)
    add(sessions, labels, "n0", owner_id=None, age=70)  # no owner (authentication off)
    add(sessions, labels, "n1", owner_id=None, age=20)
    add(sessions, labels, "e-urgent", owner_id="e", age=10, priority=2)
    add(sessions, labels, "a-urgent", owner_id="a", age=5, priority=2)
    add(sessions, labels, "f-two", owner_id="f", age=60, num_images=2)
    add(sessions, labels, "b-low", owner_id="b", age=200, priority=-1)
    add(sessions, labels, "h-p1", owner_id="h", age=3, priority=1)
    for age in (66, 64, 62):  # i and j never ran: their jobs interleave by age
        add(sessions, labels, f"i{age}", owner_id="i", age=age)
        add(sessions, labels, f"j{age - 1}", owner_id="j", age=age - 1)

    order = [take(sessions, labels, 1) for _ in range(2)]
    order += [take(sessions, labels, 3) for _ in range(2)]
    canceled = next(job_id for job_id, label in labels.items() if label == "c1")
    with sessions() as session:
        cancel_job(session, canceled)
    add(sessions, labels, "g-late", owner_id="g", age=0)
    order += [take(sessions, labels, 3) for _ in range(4)]
    order += [take(sessions, labels, 1) for _ in range(6)]
    order.append(take(sessions, labels, 2))
    assert take(sessions, labels, 4) == []

    assert order == [
        ["e-urgent"],  # the highest priority first, then age
        ["a-urgent"],
        ["h-p1", "b0", "n0"],  # companions in claim order: never-served owners by age, lower priority too
        ["i66", "j65", "i64"],  # owners tied on their turn (never) interleave by age
        ["f-two", "n1"],  # a job of two images; what fits of the rest (jobs without an owner never ran)
        ["g-late", "d0", "d1"],  # a newcomer, then d (an hour since its last start)
        ["c0", "a0", "a1"],  # c (ten minutes), then a (minutes)
        ["b1-wide"],  # alone: no other job has its batch key
        ["j63"],
        ["i62"],
        ["a2"],
        ["j61"],
        ["a3"],
        ["a4"],
        ["a5", "b-low"],
    ]
