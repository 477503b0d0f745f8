"""Queue-wait and run-time estimates, learned from recent jobs of the same model.

A job's cost is ``overhead + rate * steps * megapixels * images``: ``rate`` (seconds
per step per megapixel-image) and ``overhead`` (load, encode, store) are the medians
over the model's last ``EASEL_ETA_HISTORY_JOBS`` succeeded jobs; a job that ran in a
batch counts the batch's images and shares its overhead with the batch's jobs, so the
rate is what a batched image costs. With no history yet, a prior of 0.5 s per
step-megapixel and 0.2 s of overhead stands in.

- running job: ``rate * remaining steps * megapixels * images``;
- queued job: (cost of the queued jobs ahead of it + what remains of the model's
  running jobs) / live workers serving the model, plus its own cost; ``None`` while
  no live worker serves the model (it waits for one to start).

Nothing here reads the job history (docs/design.md principle 11): the cost figures
read the model's latest ``EASEL_ETA_HISTORY_JOBS`` succeeded rows through
``ix_jobs_model_finished`` (model, status, finished_at), a bounded rolling sample
that costs the same with a million finished jobs as with twenty; queue position and
the work ahead count only queued and running rows, through the status-first
``ix_jobs_claim``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from easel.shared.models import Job, JobStatus
from easel.shared.workers import live_workers

PRIOR_RATE = 0.5
PRIOR_OVERHEAD = 0.2


@dataclass(frozen=True)
class CostModel:
    rate: float  # seconds per step per megapixel-image
    overhead: float  # seconds per job outside denoising

    def cost(self, steps: int, width: int, height: int, images: int) -> float:
        return self.overhead + self.rate * steps * width * height / 1e6 * images


def cost_model(session: Session, model: str, history: int) -> CostModel:
    """The model's cost figures from its ``history`` latest succeeded jobs (or the prior):
    an index range of at most ``history`` rows, whatever the size of the history."""
    rows = session.execute(
        select(Job.steps, Job.width, Job.height, Job.num_images, Job.timings)
        .where(Job.model == model, Job.status == JobStatus.SUCCEEDED.value)
        .order_by(Job.finished_at.desc())
        .limit(history)
    ).all()
    rates, overheads = [], []
    for steps, width, height, images, timings in rows:
        timings = timings or {}
        generate, run = timings.get("generate_seconds"), timings.get("run_seconds")
        # A batched job shares its pipeline call (and the time around it) with the others.
        work = steps * width * height / 1e6 * (timings.get("batch_images") or images)
        if generate and work > 0:
            rates.append(generate / work)
            if run is not None:
                outside = max(0.0, run - generate - (timings.get("load_seconds") or 0))
                overheads.append(outside / (timings.get("batch_jobs") or 1))
    if not rates:
        return CostModel(PRIOR_RATE, PRIOR_OVERHEAD)
    return CostModel(statistics.median(rates), statistics.median(overheads) if overheads else 0.0)


def estimate_seconds(
    session: Session, job: Job, history: int, lost_after: float, workers: int | None = None
) -> float | None:
    """Seconds until ``job`` finishes; ``None`` once it has, or while it is queued and
    no live worker serves its model. ``workers`` (live workers serving the job's
    model) saves a query when the caller has already counted them."""
    if job.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
        return None
    if job.status == JobStatus.QUEUED.value:
        if workers is None:
            workers = live_workers(session, job.model, lost_after)
        if workers == 0:
            return None
    model = cost_model(session, job.model, history)
    if job.status == JobStatus.RUNNING.value:  # its pipeline call denoises its whole batch
        total = job.progress_total or job.steps
        call_mpx = job.width * job.height / 1e6 * (job.batch_size or job.num_images)
        return round(max(0.1, model.rate * max(0, total - job.progress_step) * call_mpx), 2)
    ahead_count, ahead_work = session.execute(
        select(
            func.count(), func.coalesce(func.sum(Job.steps * Job.width * Job.height * Job.num_images), 0)
        ).where(
            Job.status == JobStatus.QUEUED.value, Job.model == job.model, Job.id != job.id, _ahead_of(job)
        )
    ).one()
    running_work = session.scalar(
        select(
            func.coalesce(
                func.sum((Job.progress_total - Job.progress_step) * Job.width * Job.height * Job.num_images),
                0,
            )
        ).where(Job.status == JobStatus.RUNNING.value, Job.model == job.model)
    )
    wait = ahead_count * model.overhead + model.rate * (float(ahead_work) + float(running_work or 0)) / 1e6
    own = model.cost(job.steps, job.width, job.height, job.num_images)
    return round(max(0.1, wait / max(1, workers or 0) + own), 2)


def _ahead_of(job: Job) -> ColumnElement[bool]:
    return or_(
        Job.priority > job.priority,
        and_(Job.priority == job.priority, Job.created_at < job.created_at),
        and_(Job.priority == job.priority, Job.created_at == job.created_at, Job.id < job.id),
    )


def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs of the same model will be claimed before this one."""
    if job.status != JobStatus.QUEUED.value:
        return None
    ahead = select(func.count()).where(
        Job.status == JobStatus.QUEUED.value, Job.model == job.model, Job.id != job.id, _ahead_of(job)
    )
    return int(session.scalar(ahead) or 0)
