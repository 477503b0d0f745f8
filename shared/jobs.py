"""Job records as the API sees them: create, describe, cancel, list."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from easel.shared import transitions
from easel.shared.errors import ERROR_DETAIL, Conflict, NotFound, ValidationFailed, field_detail
from easel.shared.kinds import INPUTS, Input
from easel.shared.models import Job, JobStatus
from easel.shared.params import params_of
from easel.shared.schemas import (
    DEFAULT_WEBHOOK_EVENTS,
    ErrorInfo,
    JobView,
    OutputInfo,
    PreviewInfo,
    Progress,
    ResolvedJob,
)
from easel.shared.tracing import annotate, current_traceparent

OutputUrl = Callable[[Job, int], str]
InputUrl = Callable[[Job, str], str]
PreviewUrl = Callable[[Job], str]


def input_key(job_id: str, name: str) -> str:
    """Where an input of a job is stored: ``jobs/<id>/input-<name>.png`` (``shared.kinds.INPUTS``)."""
    return f"jobs/{job_id}/input-{name}.png"


def preview_key(job_id: str) -> str:
    """Where the live preview of a job is stored (overwritten as it denoises)."""
    return f"jobs/{job_id}/preview.jpg"


def webhook_events(job: Job) -> list[str]:
    """The webhook events ``job`` asked for (``completed`` only unless it said otherwise)."""
    return list(job.webhook_events or DEFAULT_WEBHOOK_EVENTS)


def request_hash(fields: dict[str, Any]) -> str:
    """A fingerprint of what was submitted, to tell a retry from a different request."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def create_job(
    session: Session,
    resolved: ResolvedJob,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
    owner_id: str | None = None,
    job_id: str | None = None,
    input_keys: Mapping[str, str] | None = None,
) -> Job:
    """Add a ``queued`` job row for ``resolved`` (committed by the caller): ``job_id``, or
    a new id; ``input_keys``, the storage keys of its stored inputs by column
    (``shared.kinds.INPUTS``)."""
    job = Job(
        **resolved.model_dump(mode="json"),  # the parameters, webhook and priority
        **({"id": job_id} if job_id else {}),
        **(input_keys or {}),
        status=JobStatus.QUEUED.value,
        progress_total=resolved.denoising_steps,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        owner_id=owner_id,
        timings={},
        outputs=[],  # a new job has none: known without a read
        trace_parent=current_traceparent(),  # the submit span's, when traced
    )
    session.add(job)
    session.flush()
    annotate({"easel.job_id": job.id, "easel.model": job.model, "easel.type": job.type})
    return job


def find_replay(session: Session, idempotency_key: str, fingerprint: str, owner_id: str | None) -> Job | None:
    """The job this owner first created with ``idempotency_key``; 409 if for other fields."""
    job = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key, Job.owner_id == owner_id))
    if job is not None and job.request_hash != fingerprint:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} was already used for a different request (job {job.id})",
            [field_detail("Idempotency-Key", "reused with different fields", idempotency_key)],
        )
    return job


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """The job, or ``NotFound`` (also when ``owner`` is given and the job is someone else's)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner_id != owner):
        raise NotFound(f"no job with id {job_id!r}", [field_detail("id", "not found", job_id)])
    return job


def cancel_job(session: Session, job_id: str, owner: str | None = None) -> Job:
    """Cancel a queued job at once, or ask a running one to stop at its next step.

    Raises ``Conflict`` (409) for a job that has already finished.
    """
    job = get_job(session, job_id, owner)
    if JobStatus(job.status).is_terminal or transitions.cancel(session, job_id) is None:
        raise _finished(get_job_fresh(session, job_id))
    return get_job_fresh(session, job_id)


def _finished(job: Job) -> Conflict:
    return Conflict(
        f"job {job.id!r} has already finished ({job.status}); it cannot be canceled",
        [field_detail("status", "already finished", job.status)],
    )


_ACTIVE_OF_OWNER = select(func.count()).where(
    Job.owner_id == bindparam("owner_id"), Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])
)  # built once: every submit counts twice


def active_jobs(session: Session, owner_id: str) -> int:
    """Queued and running jobs of one owner."""
    return int(session.scalar(_ACTIVE_OF_OWNER, {"owner_id": owner_id}) or 0)


def get_job_fresh(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


# ---- listing ----------------------------------------------------------------------------


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            f"cursor: {cursor!r} is not a cursor this API returned",
            [field_detail("cursor", "is not a cursor this API returned", cursor)],
        ) from None


def list_jobs(
    session: Session,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    job_type: str | None = None,
    owner: str | None = None,
) -> tuple[list[Job], str | None]:
    """Jobs newest first (created_at, then id), ``limit`` per page, and the next cursor."""
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner_id == owner)
    if status:
        query = query.where(Job.status == status)
    if job_type:
        query = query.where(Job.type == job_type)
    if cursor:
        stamp, job_id = decode_cursor(cursor)
        query = query.where(
            Job.created_at <= stamp,  # an index range: later pages skip the newer rows, not scan them
            or_(Job.created_at < stamp, and_(Job.created_at == stamp, Job.id < job_id)),
        )
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


# ---- the job object ---------------------------------------------------------------------


_AS_STORED = (
    "id",
    "type",
    "model",
    "status",
    "attempts",
    "worker_id",
    "cancel_requested",
    "priority",
    "batch_id",
    "batch_size",
    "created_at",
    "started_at",
    "finished_at",
    "outputs_pruned_at",
    "inputs_pruned_at",
)
"""The fields of the job object that show the row's columns as they are."""


def describe(
    job: Job,
    output_url: OutputUrl,
    position: int | None = None,
    eta_seconds: float | None = None,
    input_url: InputUrl | None = None,
    serving_workers: int | None = None,
    preview_url: PreviewUrl | None = None,
) -> JobView:
    """The REST job object for ``job``; ``output_url(job, index)`` makes output links.

    ``serving_workers`` is the number of live workers serving the job's model (``None``:
    not counted); a queued job with none is ``waiting_for_worker``.
    """
    total = job.progress_total or job.steps
    step = min(job.progress_step, total) if total else 0
    if job.status == JobStatus.SUCCEEDED.value:
        step = total
    error = ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobView(
        **{name: getattr(job, name) for name in _AS_STORED},
        params=params_of(job).recorded(),
        progress=Progress(step=step, total=total, fraction=round(step / total, 4) if total else 0.0),
        queue_position=position,
        eta_seconds=eta_seconds,
        waiting_for_worker=waiting_for_worker(job, serving_workers),
        outputs=[
            OutputInfo(
                index=o.index,
                seed=o.seed,
                url=output_url(job, o.index),
                width=o.width,
                height=o.height,
                content_type=o.content_type,
            )
            for o in job.outputs
        ],
        preview=(
            PreviewInfo(url=preview_url(job), step=job.preview_step)
            if preview_url is not None and job.preview_step is not None
            else None
        ),
        inputs={
            name: (input_url(job, name) if input_url else None) for name, key in stored_inputs(job).items()
        },
        error=error,
        webhook=_webhook_state(job),
        timings={k: v for k, v in (job.timings or {}).items() if k != ERROR_DETAIL},  # the operator's
    )


def stored_inputs(job: Job) -> dict[str, str]:
    """The storage keys of ``job``'s inputs by name (``shared.kinds.INPUTS``)."""
    return {item.name: key for item, key in stored_input_keys(job)}


def stored_input_keys(job: Job) -> list[tuple[Input, str]]:
    """``job``'s stored inputs (``shared.kinds.INPUTS``) and their storage keys."""
    return [(item, key) for item in INPUTS if (key := getattr(job, item.column))]


def waiting_for_worker(job: Job, serving_workers: int | None) -> bool:
    """Whether ``job`` is queued while no live worker serves its model (``None``: unknown)."""
    return job.status == JobStatus.QUEUED.value and serving_workers == 0


def redact_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` shown as ``***@`` (submit refuses credentials;
    a row stored before that may still carry them)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _webhook_state(job: Job) -> dict[str, Any] | None:
    if not job.webhook_url:
        return None
    return {
        "url": redact_userinfo(job.webhook_url),
        "events": webhook_events(job),
        "attempts": job.webhook_attempts,
        "delivered_at": job.webhook_delivered_at.isoformat() if job.webhook_delivered_at else None,
        "last_error": job.webhook_error,
    }
