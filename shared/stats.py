"""Maintained statistics of finished jobs: what ``/metrics`` reads instead of the history.

Hot paths never scan the job history (docs/design.md principle 11). So when a job
reaches a final status, ``record_finished`` adds it, in the same transaction as the
change of status (``record_all_finished``: the jobs of a batch at once), to

- ``job_counts``: jobs finished per (model, type, status), the
  ``easel_jobs_finished`` counter (and, with the queued and running rows, which an
  index finds, ``easel_jobs_submitted``);
- ``job_durations``: per model, one non-cumulative histogram bucket of the job's
  queue wait (``started_at - created_at``) and one of its run time
  (``finished_at - started_at``), with their sums.

Each write is one atomic ``INSERT ... ON CONFLICT DO UPDATE SET count = count + 1``,
so workers finishing jobs at the same time never lose an increment. Deleting job
rows (retention) leaves the counters as they are: they stay monotonic.

``rebuild`` recomputes both tables from the job rows (migration 0006 fills them from
the jobs that finished before it; benchmarks that bulk-insert history call it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Table, case, delete, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from easel.shared.models import TERMINAL_STATUSES, Job, JobCount, JobDuration, JobStatus

WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RUN_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BUCKETS = {"wait": WAIT_BUCKETS, "run": RUN_BUCKETS}
INF = "+Inf"
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
TERMINAL = tuple(sorted(status.value for status in TERMINAL_STATUSES))


class FinishedJob(Protocol):
    """What ``record_finished`` reads of a job (a ``Job``, or a row with these columns)."""

    model: str
    type: str
    created_at: datetime
    started_at: datetime | None


def bucket_of(seconds: float, bounds: Sequence[float]) -> str:
    """The label of the first bucket whose upper bound holds ``seconds``."""
    for bound in bounds:
        if seconds <= bound:
            return str(bound)
    return INF


Finished = tuple[FinishedJob, str | JobStatus, datetime]
"""A job, the final status it reached and when (``record_all_finished``)."""


def record_finished(
    session: Session, job: FinishedJob, status: str | JobStatus, finished_at: datetime
) -> None:
    """Count ``job`` reaching the final ``status`` at ``finished_at`` (not committed).

    Call it exactly once per change to a final status, in the transaction of the
    guarded ``UPDATE`` that made the change and only when that update changed the row,
    so the counters move if and only if the status did.
    """
    record_all_finished(session, [(job, status, finished_at)])


def record_all_finished(session: Session, finished: Sequence[Finished]) -> None:
    """``record_finished`` for each of ``finished`` (not committed), with one upsert per
    counter they touch, however many jobs: a batch of jobs of one model ending together
    adds to a few rows. The rows are written in one order (sorted keys, counts first) in
    every transaction, so workers finishing at the same time never deadlock."""
    counts: Counter[tuple[str, str, str]] = Counter()
    durations: dict[tuple[str, str, str], tuple[int, float]] = {}
    for job, status, finished_at in finished:
        status = status.value if isinstance(status, JobStatus) else status
        if status not in TERMINAL:
            raise ValueError(f"status {status!r} is not final; expected one of {', '.join(TERMINAL)}")
        counts[(job.model, job.type, status)] += 1
        if job.started_at is None:  # canceled while queued: it neither waited to start nor ran
            continue
        for kind, seconds in (
            ("wait", (job.started_at - job.created_at).total_seconds()),
            ("run", (finished_at - job.started_at).total_seconds()),
        ):
            seconds = max(0.0, seconds)  # web and worker clocks may differ
            key = (kind, job.model, bucket_of(seconds, BUCKETS[kind]))
            count, total = durations.get(key, (0, 0.0))
            durations[key] = (count + 1, total + seconds)
    for (model, job_type, status), count in sorted(counts.items()):
        add(session, _table(JobCount), {"model": model, "type": job_type, "status": status}, count=count)
    for (kind, model, bucket), (count, total) in sorted(durations.items()):
        add(
            session,
            _table(JobDuration),
            {"kind": kind, "model": model, "bucket": bucket},
            count=count,
            total=total,
        )


def _table(model: type[JobCount | JobDuration]) -> Table:
    """The model's table (declarative mapping types ``__table__`` as any ``FromClause``)."""
    return cast(Table, model.__table__)


def add(session: Session, table: Table, key: dict[str, Any], **amounts: float) -> None:
    """``INSERT`` the row, or add ``amounts`` to the one with the same ``key``."""
    upsert = _upsert(session.get_bind().dialect.name, table, tuple(key), tuple(amounts))
    session.execute(upsert, {**key, **amounts})


@cache
def _upsert(dialect: str, table: Table, key: tuple[str, ...], amounts: tuple[str, ...]) -> Any:
    """The ``INSERT ... ON CONFLICT (key) DO UPDATE SET amount = amount + excluded.amount``
    of ``table``, built once per shape (its values are the execution's parameters)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"no upsert for the {dialect!r} database")
    statement = insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(key), set_={name: table.c[name] + statement.excluded[name] for name in amounts}
    )


def seconds_between(later: Any, earlier: Any, dialect: str) -> ColumnElement[float]:
    """``later - earlier`` in seconds as SQL (never negative)."""
    if dialect == "postgresql":
        delta: ColumnElement[float] = func.date_part("epoch", later - earlier)
    elif dialect == "sqlite":
        delta = (func.julianday(later) - func.julianday(earlier)) * 86400.0
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"no duration expression for the {dialect!r} database")
    return case((delta < 0, 0.0), else_=delta)


def rebuild(session: Session) -> None:
    """Recompute ``job_counts`` and ``job_durations`` from the job rows (not committed)."""
    dialect = session.get_bind().dialect.name
    session.execute(delete(JobCount))
    session.execute(delete(JobDuration))
    counts = session.execute(
        select(Job.model, Job.type, Job.status, func.count())
        .where(Job.status.in_(TERMINAL))
        .group_by(Job.model, Job.type, Job.status)
    ).all()
    if counts:
        session.execute(
            _table(JobCount).insert(),
            [{"model": m, "type": t, "status": s, "count": n} for m, t, s, n in counts],
        )
    for kind, later, earlier in (
        ("wait", Job.started_at, Job.created_at),
        ("run", Job.finished_at, Job.started_at),
    ):
        seconds = seconds_between(later, earlier, dialect)
        bucket = case(
            *((seconds <= bound, literal(str(bound))) for bound in BUCKETS[kind]), else_=literal(INF)
        ).label("bucket")
        rows = session.execute(
            select(Job.model, bucket, func.count(), func.coalesce(func.sum(seconds), 0.0))
            .where(Job.status.in_(TERMINAL), Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .group_by(Job.model, bucket)
        ).all()
        if rows:
            session.execute(
                _table(JobDuration).insert(),
                [
                    {"kind": kind, "model": m, "bucket": b, "count": n, "total": float(total)}
                    for m, b, n, total in rows
                ],
            )
