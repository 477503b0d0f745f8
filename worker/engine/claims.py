"""Atomic claims of queued jobs (docs/design.md, principles 2 and 5).

Claim order: priority first; within a priority, owners (API keys) take turns: the
owner whose last job started longest ago (or never) goes first, so one client's
flood does not starve another's single job; then age. A claim takes a head job in that
order plus the queued jobs that share its batch key, up to ``max_images`` images,
so they run in one pipeline call.

PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never wait
on or take the same row. SQLite: a guarded ``UPDATE ... WHERE status = 'queued'``,
which only one writer can win.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from easel.shared.models import Job, JobStatus
from easel.shared.params import BATCH_KEY
from easel.shared.transitions import claim, set_batch_size

BATCH_KEY_COLUMNS = tuple(getattr(Job, name) for name in BATCH_KEY)
"""The row's columns of the batch key (``easel.shared.params.BATCH_KEY``)."""


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


_SERVED = aliased(Job)
_LAST_SERVED = select(func.max(_SERVED.started_at)).where(_SERVED.owner_id == Job.owner_id).scalar_subquery()
"""When each queued job's owner last had a job started. Built once: an alias built per
claim re-adapts every column of ``jobs`` and cost more than the claim's SQL."""


def _in_claim_order(models: Sequence[str] | None, *where: Any) -> Select[Any]:
    """Queued jobs of ``models``: priority, then the owner served least recently, then age."""
    query = select(Job.id, Job.num_images, *BATCH_KEY_COLUMNS).where(
        Job.status == JobStatus.QUEUED.value, *where
    )
    if models:
        query = query.where(Job.model.in_(list(models)))
    return query.order_by(Job.priority.desc(), _LAST_SERVED.asc().nulls_first(), Job.created_at, Job.id)


def _same_key(row: Any) -> list[Any]:
    return [
        column.is_(None) if row[i + 2] is None else column == row[i + 2]
        for i, column in enumerate(BATCH_KEY_COLUMNS)
    ]


def claim_batch(
    session: Session,
    worker_id: str,
    models: Sequence[str] | None = None,
    max_images: int = 1,
    wait_seconds: float = 0.0,
    poll_seconds: float = 0.02,
) -> list[Job]:
    """Claim the best queued job for ``models`` (all when empty) and the queued jobs
    that share its batch key, up to ``max_images`` images in all; commit.

    The head job is always taken, even if its own images exceed ``max_images``.
    With ``wait_seconds``, a batch that is not full waits that long for compatible
    jobs to arrive. Claimed jobs are ``running`` with ``attempts`` raised by one and
    share one ``batch_id``; ``batch_size`` is the images of the whole batch. The jobs
    in claim order, head first (as the claim's own ``UPDATE ... RETURNING`` read them,
    outputs not loaded); empty when nothing is claimable.
    """
    batch_id = new_batch_id()
    claimed = _claim_first_round(session, worker_id, models, max_images, batch_id)
    if not claimed:
        session.rollback()
        return []
    session.commit()
    head, jobs = claimed
    images = sum(job.num_images for job in jobs)
    if images < max_images and wait_seconds > 0:
        deadline = time.monotonic() + wait_seconds
        while images < max_images and time.monotonic() < deadline:
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
            more = _claim_companions(session, worker_id, models, head, max_images - images, batch_id)
            jobs += more
            images += sum(job.num_images for job in more)
            session.commit()
        _record_batch_size(session, jobs, batch_id)
        session.commit()
    return jobs


def _claim_first_round(
    session: Session, worker_id: str, models: Sequence[str] | None, max_images: int, batch_id: str
) -> tuple[Any, list[Job]] | None:
    """Mark ours (not committed) the best queued job and the queued jobs that share its
    batch key and fit: one read of each and one write. The head's row and the jobs
    marked, head first."""
    for _ in range(10):  # SQLite: lost a race for the head, try the next best job
        head = session.execute(_locked(session, _in_claim_order(models).limit(1))).first()
        if head is None:
            return None
        chosen = [
            (head.id, head.num_images),
            *_companions(session, models, head, max_images - head.num_images),
        ]
        jobs = _mark_ours(session, chosen, worker_id, batch_id, sum(count for _, count in chosen))
        if not jobs or jobs[0].id != head.id:
            session.rollback()
            continue
        if len(jobs) != len(chosen):
            _record_batch_size(session, jobs, batch_id)
        return head, jobs
    return None


def _companions(
    session: Session, models: Sequence[str] | None, head: Any, room: int
) -> list[tuple[str, int]]:
    """Queued jobs (locked on PostgreSQL) with ``head``'s batch key whose images fit in
    ``room``, in claim order: their (id, images)."""
    if room <= 0:
        return []
    query = _in_claim_order(models, *_same_key(head), Job.id != head.id, Job.num_images <= room).limit(room)
    chosen: list[tuple[str, int]] = []
    for row in session.execute(_locked(session, query)).all():
        if row.num_images <= room - sum(count for _, count in chosen):
            chosen.append((row.id, row.num_images))
    return chosen


def _claim_companions(
    session: Session, worker_id: str, models: Sequence[str] | None, head: Any, room: int, batch_id: str
) -> list[Job]:
    """Mark ours (not committed) more queued jobs with ``head``'s batch key that fit in
    ``room``; those jobs."""
    chosen = _companions(session, models, head, room)
    return _mark_ours(session, chosen, worker_id, batch_id) if chosen else []


def _mark_ours(
    session: Session,
    chosen: list[tuple[str, int]],
    worker_id: str,
    batch_id: str,
    batch_size: int | None = None,
) -> list[Job]:
    """Mark ``chosen`` running for us (not committed): those that were still queued (on
    SQLite another worker may have taken some between our read and our write), in the
    order of ``chosen``."""
    by_id = {
        job.id: job
        for job in claim(session, [job_id for job_id, _ in chosen], worker_id, batch_id, batch_size)
    }
    return [by_id[job_id] for job_id, _ in chosen if job_id in by_id]


def _record_batch_size(session: Session, jobs: list[Job], batch_id: str) -> None:
    """Record the images of the whole batch on each of ``jobs`` (not committed): on their
    rows and on the loaded objects (which that marks unchanged, so no flush writes it again)."""
    images = sum(job.num_images for job in jobs)
    set_batch_size(session, [job.id for job in jobs], batch_id, images)
    for job in jobs:
        set_committed_value(job, "batch_size", images)


def _locked(session: Session, query: Select[Any]) -> Select[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=Job, skip_locked=True)
    return query
