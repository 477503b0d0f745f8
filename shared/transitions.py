"""Every change of a job's state, as one guarded ``UPDATE`` each.

The job row is the truth (docs/design.md, "Job states"): ``queued -> running ->
succeeded | failed | canceled``, ``queued -> canceled``, ``running -> queued`` only
when a worker is lost. Each function here changes a row only from the state it
expects (and, for a running job, only for the worker that holds it), and says
whether it did, so racing writers never undo each other and terminal states never
change. A move to a final status also counts the job in the maintained statistics
(``easel.shared.stats``) in the same transaction (a success also in its owner's usage
of the day: ``easel.shared.usage``), and a move into or out of ``queued``
keeps the claim order's state (``easel.shared.queue_turns``) in it. Callers commit,
except where a docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, noload

from easel.shared import queue_turns, usage
from easel.shared.db import rowcount
from easel.shared.models import Job, JobOutput, JobStatus, utcnow
from easel.shared.stats import Finished, FinishedJob, record_all_finished, record_finished

QUEUED, RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value


def _update(session: Session, *where: ColumnElement[bool], **values: Any) -> int:
    return rowcount(
        session.execute(
            update(Job).where(*where).values(**values).execution_options(synchronize_session=False)
        )
    )


def _end(session: Session, *where: ColumnElement[bool], leaves_queue: bool = False, **values: Any) -> bool:
    """Move the row to the final status in ``values`` if ``where`` holds, and count it in
    the maintained statistics in the same transaction (and, when ``where`` says it is
    queued, in the queue's state); whether it moved."""
    row = _end_uncounted(session, *where, **values)
    if row is None:
        return False
    record_finished(session, row, values["status"], values["finished_at"])
    if leaves_queue:
        queue_turns.left(session, [cast(queue_turns.Queued, row)])
    return True


def _end_uncounted(session: Session, *where: ColumnElement[bool], **values: Any) -> FinishedJob | None:
    """Move the row to the final status in ``values`` if ``where`` holds; what the
    statistics read of it (``FinishedJob``) if it moved, for the caller to count."""
    return session.execute(
        update(Job)
        .where(*where)
        .values(**values)
        .returning(Job.model, Job.type, Job.created_at, Job.started_at, *_QUEUE_COLUMNS)
        .execution_options(synchronize_session=False)
    ).first()


_QUEUE_COLUMNS = (Job.priority, Job.owner_id, Job.id)
"""With model, type and created_at, what the queue's state reads of a job (``Queued``)."""


def _requeue(session: Session, *where: ColumnElement[bool], **values: Any) -> bool:
    """Move the row back to ``queued`` with ``values`` if ``where`` holds, and count it in
    the queue's state in the same transaction; whether it moved."""
    rows = session.execute(
        update(Job)
        .where(*where)
        .values(status=QUEUED, **values)
        .returning(Job.model, Job.type, Job.created_at, *_QUEUE_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    queue_turns.joined(session, rows)
    return bool(rows)


def held_by(worker_id: str | None, *job_ids: str) -> tuple[ColumnElement[bool], ...]:
    """The guard of a running job: still running, and still this worker's (the status
    through ``coalesce``, as in ``_HELD``)."""
    return (Job.id.in_(job_ids), func.coalesce(Job.status, "") == RUNNING, Job.worker_id == worker_id)


# The statements a worker runs for every batch (claim, progress, finish), built once with
# bound parameters on the table: building them per call cost more than running them.
_JOBS = cast(Table, Job.__table__)
_THESE = _JOBS.c.id.in_(bindparam("job_ids", expanding=True))
# A guard, not a way in (as ``_CLAIM``'s): given ``status = 'running'`` bare, PostgreSQL's
# planner, whose statistics saw next to no running job (a deep queue: a million queued,
# a handful running), reads the rows through ``ix_jobs_status_finished`` (small: one
# status) and past the entry of every job that ran since the last VACUUM, rather than
# the one id through the primary key.
_HELD = (_THESE, func.coalesce(_JOBS.c.status, "") == RUNNING, _JOBS.c.worker_id == bindparam("holder"))
_CLAIM = (
    update(_JOBS)
    # A guard, not a way in: given ``status = 'queued'`` bare, SQLite's planner (without
    # ANALYZE's statistics) reads the rows through a status index, every queued row,
    # instead of the few ids; ``coalesce`` of the NOT NULL column changes nothing else.
    .where(_THESE, func.coalesce(_JOBS.c.status, "") == QUEUED)
    .values(
        status=RUNNING,
        attempts=_JOBS.c.attempts + 1,
        worker_id=bindparam("holder"),
        batch_id=bindparam("new_batch_id"),
        batch_size=bindparam("new_batch_size"),
        started_at=bindparam("now"),
        progress_step=0,
        preview_step=None,  # a rerun shows no preview of an earlier attempt
        updated_at=bindparam("now"),
    )
)
_CLAIMED = (
    select(Job)
    .from_statement(_CLAIM.returning(*_JOBS.c))
    .options(noload(Job.outputs))
    .execution_options(populate_existing=True)
)
_PROGRESS = (
    update(_JOBS)
    .where(*_HELD)
    .values(progress_step=bindparam("new_step"), progress_total=bindparam("new_total"))
    .returning(_JOBS.c.id, _JOBS.c.cancel_requested)
)
_ENDING: dict[str, Any] = {
    "status": bindparam("new_status"),
    "finished_at": bindparam("now"),
    "timings": bindparam("new_timings"),
    "error_code": bindparam("new_error_code"),
    "error_message": bindparam("new_error_message"),
    "updated_at": bindparam("now"),
}
# FinishedJob, and what usage counts (``shared.usage``): the owner and its images
_COUNTED = (
    _JOBS.c.model,
    _JOBS.c.type,
    _JOBS.c.created_at,
    _JOBS.c.started_at,
    _JOBS.c.owner_id,
    _JOBS.c.num_images,
)
_END_UNLESS_CANCELED = (
    update(_JOBS).where(*_HELD, _JOBS.c.cancel_requested.is_(False)).values(**_ENDING).returning(*_COUNTED)
)
_END_HELD = update(_JOBS).where(*_HELD).values(**_ENDING).returning(*_COUNTED)


# ---- queued -> running -------------------------------------------------------------------


def claim(
    session: Session, job_ids: Sequence[str], worker_id: str, batch_id: str, batch_size: int | None = None
) -> list[Job]:
    """Move the still-queued of ``job_ids`` to running for ``worker_id`` in one batch:
    the jobs that moved, as they are now (read by the same statement, in no set order;
    their outputs are not loaded: a claimed job's outputs are its runner's to write).
    Each claim counts as an attempt, and is its owner's turn (``queue_turns``)."""
    now = utcnow()
    values = {"new_batch_id": batch_id, "new_batch_size": batch_size, "now": now}
    parameters = {"job_ids": list(job_ids), "holder": worker_id, **values}
    jobs = list(session.scalars(_CLAIMED, parameters).all())
    queue_turns.left(session, jobs, started_at=now)
    return jobs


def set_batch_size(session: Session, job_ids: Sequence[str], batch_id: str, images: int) -> None:
    """Record the images of the whole batch on each of its jobs."""
    _update(session, Job.id.in_(list(job_ids)), Job.batch_id == batch_id, batch_size=images)


# ---- running -----------------------------------------------------------------------------


def record_progress(
    session: Session, job_ids: Sequence[str], worker_id: str, step: int, total: int
) -> dict[str, bool]:
    """Record (step, total) on the jobs still ours, in one statement that also reads their
    cancel requests: ``{job id: cancel requested}`` for each job still ours."""
    rows = session.execute(
        _PROGRESS, {"job_ids": list(job_ids), "holder": worker_id, "new_step": step, "new_total": total}
    ).all()
    return {job_id: bool(cancel) for job_id, cancel in rows}


def record_preview(session: Session, job_ids: Sequence[str], worker_id: str, step: int) -> int:
    """Record that the stored previews of the jobs still ours show ``step``; how many."""
    return _update(session, *held_by(worker_id, *job_ids), preview_step=step)


@dataclass(frozen=True)
class Ending:
    """How one of our running jobs ends (``finish_all``)."""

    job_id: str
    status: JobStatus
    timings: dict[str, Any]
    error: tuple[str, str] | None = None
    outputs: Sequence[JobOutput] = ()


def finish(
    session: Session,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    timings: dict[str, Any],
    error: tuple[str, str] | None = None,
    outputs: Sequence[JobOutput] = (),
) -> JobStatus | None:
    """End our running job as ``status`` with its outputs; commits. The status it got, or
    ``None`` if the job is no longer ours (``finish_all`` of one job)."""
    return finish_all(session, worker_id, [Ending(job_id, status, timings, error, outputs)])[0]


def finish_all(session: Session, worker_id: str, endings: Sequence[Ending]) -> list[JobStatus | None]:
    """End our running jobs, each as its ``Ending`` says and with its outputs, in one
    transaction; commits. For each, the status it got, or ``None`` if the job is no
    longer ours (nothing is written for it).

    A job whose cancel was requested ends ``canceled``, not ``succeeded``: the client
    asked, and nothing it did not want is published. One guarded ``UPDATE`` per job;
    then their outputs and statistics in a few statements for all of them (the jobs of
    a batch end together).
    """
    now = utcnow()
    got: list[JobStatus | None] = []
    counted: list[Finished] = []
    used: list[usage.Used] = []
    outputs: list[JobOutput] = []
    for ending in endings:
        code, message = ending.error or (None, None)
        values = {
            "job_ids": [ending.job_id],
            "holder": worker_id,
            "now": now,
            "new_status": ending.status.value,
            "new_timings": ending.timings,
            "new_error_code": code,
            "new_error_message": message,
        }
        status, row = ending.status, None
        if status is JobStatus.SUCCEEDED:
            row = session.execute(_END_UNLESS_CANCELED, values).first()
            if row is None:  # a cancel was asked meanwhile (or the job is no longer ours)
                status = JobStatus.CANCELED
                values["new_status"] = status.value
        if row is None:
            row = session.execute(_END_HELD, values).first()
        got.append(status if row is not None else None)
        if row is None:
            continue
        counted.append((row, status, now))
        if status is JobStatus.SUCCEEDED:
            outputs.extend(ending.outputs)
            used.append(usage.Used(row.owner_id, row.num_images, usage.gpu_seconds_of(ending.timings), now))
    if outputs:  # a rerun replaces what an earlier attempt stored
        session.execute(delete(JobOutput).where(JobOutput.job_id.in_({o.job_id for o in outputs})))
        session.execute(insert(JobOutput), [_output_values(output) for output in outputs])
    record_all_finished(session, counted)
    usage.record_all(session, used)
    session.commit()
    return got


def _output_values(output: JobOutput) -> dict[str, Any]:
    """A new ``JobOutput``'s columns, for one multi-row ``INSERT`` (the id and creation
    time come from the table's defaults)."""
    return {name: getattr(output, name) for name in _OUTPUT_COLUMNS}


_OUTPUT_COLUMNS = tuple(c.key for c in JobOutput.__table__.columns if c.key not in ("id", "created_at"))


# ---- cancel ------------------------------------------------------------------------------


def cancel(session: Session, job_id: str) -> JobStatus | None:
    """Cancel a queued job at once, or ask a running one to stop at its next step; commits.
    ``canceled``, ``running`` (stop requested), or ``None`` if it had already finished."""
    now = utcnow()
    canceled = _end(
        session,
        Job.id == job_id,
        Job.status == QUEUED,
        leaves_queue=True,
        status=JobStatus.CANCELED.value,
        cancel_requested=True,
        finished_at=now,
        updated_at=now,
    )
    if canceled:
        session.commit()
        return JobStatus.CANCELED
    asked = _update(session, Job.id == job_id, Job.status == RUNNING, cancel_requested=True, updated_at=now)
    session.commit()
    return JobStatus.RUNNING if asked else None


# ---- lost workers ------------------------------------------------------------------------


def recover_lost(
    session: Session,
    job_id: str,
    worker_id: str | None,
    attempts: int,
    cancel_requested: bool,
    max_attempts: int,
) -> JobStatus | None:
    """A running job of a lost worker: ``canceled`` if its cancel was asked, ``failed``
    (``worker_lost``) once it used ``max_attempts``, else back to ``queued``; commits.
    The new status, or ``None`` if the job was no longer that worker's."""
    now = utcnow()
    mine = held_by(worker_id, job_id)
    if not cancel_requested and attempts < max_attempts:
        requeued = _requeue(session, *mine, worker_id=None, progress_step=0, updated_at=now)
        session.commit()
        return JobStatus.QUEUED if requeued else None
    values: dict[str, Any]
    if cancel_requested:
        values = {"status": JobStatus.CANCELED.value, "finished_at": now}
    else:
        values = {
            "status": JobStatus.FAILED.value,
            "finished_at": now,
            "error_code": "worker_lost",
            "error_message": (
                f"the worker running this job was lost on each of its {attempts} attempts "
                f"(last: {worker_id}); giving up after EASEL_MAX_ATTEMPTS={max_attempts}"
            ),
        }
    done = _end(session, *mine, **values, updated_at=now)
    session.commit()
    return JobStatus(values["status"]) if done else None


# ---- operators ---------------------------------------------------------------------------


_RUN_TRACES = ("worker_id", "started_at", "finished_at", "error_code", "error_message", "outputs_pruned_at")
"""The columns a run fills in and a rerun clears (``requeue_finished``)."""


def requeue_finished(session: Session, job_id: str) -> bool:
    """Run a failed or canceled job again from scratch (same parameters and seed): back
    to ``queued`` with its attempts and outputs cleared; commits. Whether it moved (a job
    whose inputs retention deleted cannot run again)."""
    now = utcnow()
    moved = _requeue(
        session,
        Job.id == job_id,
        Job.status.in_([JobStatus.FAILED.value, JobStatus.CANCELED.value]),
        Job.inputs_pruned_at.is_(None),
        **dict.fromkeys(_RUN_TRACES),
        attempts=0,
        cancel_requested=False,
        progress_step=0,
        created_at=now,
        updated_at=now,
    )
    if moved:
        session.execute(delete(JobOutput).where(JobOutput.job_id == job_id))
    session.commit()
    return bool(moved)


# ---- webhooks ----------------------------------------------------------------------------


def record_webhook_attempt(session: Session, job_id: str, error: str | None) -> None:
    """Count one delivery attempt of a finished job's webhook: delivered, or its error; commits."""
    values: dict[str, Any] = {"webhook_attempts": Job.webhook_attempts + 1, "webhook_error": error}
    if error is None:
        values["webhook_delivered_at"] = utcnow()
    _update(session, Job.id == job_id, **values)
    session.commit()
