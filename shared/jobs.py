"""Job records as the API sees them: create, fetch, describe."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.schemas import ErrorInfo, JobView, OutputInfo, Progress, ResolvedJob


def create_job(session: Session, resolved: ResolvedJob) -> Job:
    """Add a ``queued`` job row for ``resolved`` (committed by the caller)."""
    job = Job(
        type=resolved.type.value,
        model=resolved.model,
        status=JobStatus.QUEUED.value,
        prompt=resolved.prompt,
        negative_prompt=resolved.negative_prompt,
        width=resolved.width,
        height=resolved.height,
        steps=resolved.steps,
        guidance_scale=resolved.guidance_scale,
        scheduler=resolved.scheduler,
        seed=resolved.seed,
        num_images=resolved.num_images,
        strength=resolved.strength,
        timings={},
    )
    session.add(job)
    session.flush()
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs of the same model will be claimed before this one."""
    if job.status != JobStatus.QUEUED.value:
        return None
    ahead = (
        select(func.count())
        .select_from(Job)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.model == job.model,
            Job.id != job.id,
            or_(
                Job.priority > job.priority,
                and_(Job.priority == job.priority, Job.created_at < job.created_at),
                and_(Job.priority == job.priority, Job.created_at == job.created_at, Job.id < job.id),
            ),
        )
    )
    return int(session.scalar(ahead) or 0)


def describe(job: Job, output_url: Callable[[Job, int], str], position: int | None = None) -> JobView:
    """The REST job object for ``job``; ``output_url(job, index)`` makes output links."""
    total = job.progress_total or job.steps
    step = min(job.progress_step, total) if total else 0
    if job.status == JobStatus.SUCCEEDED.value:
        step = total
    error = (
        ErrorInfo(code=job.error_code or "error", message=job.error_message or "") if job.error_code else None
    )
    return JobView(
        id=job.id,
        type=job.type,
        model=job.model,
        status=job.status,
        params=job.params(),
        progress=Progress(step=step, total=total, fraction=round(step / total, 4) if total else 0.0),
        queue_position=position,
        eta_seconds=None,
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
        error=error,
        attempts=job.attempts,
        worker_id=job.worker_id,
        timings=job.timings or {},
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
