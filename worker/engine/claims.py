"""Atomic claims of queued jobs (DESIGN principles 2 and 5).

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

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, aliased

from shared.models import Job, JobStatus, utcnow

BATCH_KEY = (
    Job.model,
    Job.type,
    Job.width,
    Job.height,
    Job.steps,
    Job.scheduler,
    Job.guidance_scale,
    Job.strength,
)
"""Columns jobs must share to run in one pipeline call."""


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def _in_claim_order(models: Sequence[str] | None, *where: Any) -> Select[Any]:
    """Queued jobs of ``models``: priority, then the owner served least recently, then age."""
    served = aliased(Job)
    last_served = select(func.max(served.started_at)).where(served.owner_id == Job.owner_id).scalar_subquery()
    query = select(Job.id, Job.num_images, *BATCH_KEY).where(Job.status == JobStatus.QUEUED.value, *where)
    if models:
        query = query.where(Job.model.in_(list(models)))
    return query.order_by(Job.priority.desc(), last_served.asc().nulls_first(), Job.created_at, Job.id)


def _same_key(row: Any) -> list[Any]:
    return [
        column.is_(None) if row[i + 2] is None else column == row[i + 2] for i, column in enumerate(BATCH_KEY)
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
    share one ``batch_id``; ``batch_size`` is the images of the whole batch. Empty
    when nothing is claimable.
    """
    batch_id = new_batch_id()
    head = _claim_head(session, worker_id, models, batch_id)
    if head is None:
        session.rollback()
        return []
    ids, images = [head.id], head.num_images
    deadline = time.monotonic() + wait_seconds
    while True:  # the first round shares the head's transaction: one atomic claim
        more = _claim_companions(session, worker_id, models, head, max_images - images, batch_id)
        ids += [job_id for job_id, _ in more]
        images += sum(count for _, count in more)
        session.commit()
        if images >= max_images or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
    session.execute(
        update(Job)
        .where(Job.id.in_(ids), Job.worker_id == worker_id, Job.batch_id == batch_id)
        .values(batch_size=images)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    jobs = session.scalars(select(Job).where(Job.id.in_(ids)).execution_options(populate_existing=True)).all()
    by_id = {job.id: job for job in jobs}
    return [by_id[job_id] for job_id in ids if job_id in by_id]


def claim_next(session: Session, worker_id: str, models: Sequence[str] | None = None) -> Job | None:
    """Claim the best queued job for ``models`` alone; ``None`` if none is claimable."""
    jobs = claim_batch(session, worker_id, models, max_images=1)
    return jobs[0] if jobs else None


def _claim_head(session: Session, worker_id: str, models: Sequence[str] | None, batch_id: str) -> Any:
    """Mark the best queued job ours (not committed); its row (id, num_images, batch key)."""
    for _ in range(10):  # SQLite: lost a race, try the next best job
        row = session.execute(_locked(session, _in_claim_order(models).limit(1))).first()
        if row is None:
            return None
        if _mark_running(session, [row.id], worker_id, batch_id):
            return row
        session.rollback()
    return None


def _claim_companions(
    session: Session, worker_id: str, models: Sequence[str] | None, head: Any, room: int, batch_id: str
) -> list[tuple[str, int]]:
    """Mark ours the queued jobs with ``head``'s batch key whose images fit in ``room``,
    in claim order (not committed); their (id, images)."""
    if room <= 0:
        return []
    query = _in_claim_order(models, *_same_key(head), Job.num_images <= room).limit(room)
    chosen: list[tuple[str, int]] = []
    for row in session.execute(_locked(session, query)).all():
        if row.num_images <= room - sum(count for _, count in chosen):
            chosen.append((row.id, row.num_images))
    if not chosen:
        return []
    if _mark_running(session, [job_id for job_id, _ in chosen], worker_id, batch_id) != len(chosen):
        # SQLite: another worker took some between our read and our write; keep ours.
        mine = set(session.scalars(select(Job.id).where(Job.batch_id == batch_id)))
        chosen = [(job_id, count) for job_id, count in chosen if job_id in mine]
    return chosen


def _locked(session: Session, query: Select[Any]) -> Select[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=Job, skip_locked=True)
    return query


def _mark_running(session: Session, job_ids: list[str], worker_id: str, batch_id: str) -> int:
    """Move the still-queued of ``job_ids`` to running for us; how many moved."""
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            attempts=Job.attempts + 1,
            worker_id=worker_id,
            batch_id=batch_id,
            batch_size=None,
            started_at=utcnow(),
            progress_step=0,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
