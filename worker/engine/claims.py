"""Atomic claims of queued jobs (DESIGN principle 2).

PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never wait
on or take the same row. SQLite: a guarded ``UPDATE ... WHERE status = 'queued'``,
which only one writer can win. Priority first, then age, decided at claim time.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow


def _candidates(models: Sequence[str] | None):  # type: ignore[no-untyped-def]
    query = select(Job.id).where(Job.status == JobStatus.QUEUED.value)
    if models:
        query = query.where(Job.model.in_(list(models)))
    return query.order_by(Job.priority.desc(), Job.created_at, Job.id)


def claim_next(session: Session, worker_id: str, models: Sequence[str] | None = None) -> Job | None:
    """Claim the best queued job for ``models`` (all when empty) and commit.

    The claimed job is ``running`` with ``attempts`` raised by one. ``None`` when
    nothing is claimable.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        job_id = session.scalar(_candidates(models).limit(1).with_for_update(skip_locked=True))
        if job_id is None:
            session.rollback()
            return None
        _mark_running(session, job_id, worker_id)
    else:
        for _ in range(10):  # lost a race: try the next best job
            job_id = session.scalar(_candidates(models).limit(1))
            if job_id is None:
                session.rollback()
                return None
            if _mark_running(session, job_id, worker_id):
                break
            session.rollback()
        else:
            return None
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def _mark_running(session: Session, job_id: str, worker_id: str) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            attempts=Job.attempts + 1,
            worker_id=worker_id,
            started_at=utcnow(),
            progress_step=0,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
