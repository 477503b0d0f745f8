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
``ix_jobs_claim``. ``QueueEstimates`` places the jobs of one request: it reads the
live workers and each model's cost figures once, and a queued job's line (position,
work ahead, work running) in one statement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from easel.shared.models import Job, JobStatus
from easel.shared.workers import live_worker_models, serves

PRIOR_RATE = 0.5
PRIOR_OVERHEAD = 0.2


@dataclass(frozen=True)
class CostModel:
    rate: float  # seconds per step per megapixel-image
    overhead: float  # seconds per job outside denoising

    def cost(self, steps: int, width: int, height: int, images: int) -> float:
        return self.overhead + self.rate * steps * width * height / 1e6 * images


_RECENT_SUCCEEDED = (
    select(Job.steps, Job.width, Job.height, Job.num_images, Job.timings)
    .where(Job.model == bindparam("model"), Job.status == JobStatus.SUCCEEDED.value)
    .order_by(Job.finished_at.desc())
    .limit(bindparam("history"))
)
"""A model's latest succeeded jobs. The hot statements here are built once, with bound
parameters: building one per call cost several times what running it does."""


def cost_model(session: Session, model: str, history: int) -> CostModel:
    """The model's cost figures from its ``history`` latest succeeded jobs (or the prior):
    an index range of at most ``history`` rows, whatever the size of the history."""
    rows = session.execute(_RECENT_SUCCEEDED, {"model": model, "history": history}).all()
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


@dataclass(frozen=True)
class Place:
    """Where a job stands: its queue position, its estimate and the live workers serving
    its model (``None`` where they do not apply: position and workers count only for a
    queued job, the estimate only for a queued or running one)."""

    position: int | None = None
    eta_seconds: float | None = None
    workers: int | None = None


@dataclass
class QueueEstimates:
    """Queue positions and estimates for the jobs of one request.

    Reads the live workers once and each model's cost figures once, however many jobs
    it places (a page of the list), and a queued job's line in one statement: the queued
    jobs ahead of it and the work left in its model's running jobs.
    """

    session: Session
    history: int
    lost_after: float
    _worker_models: list[list[str]] | None = field(default=None, init=False, repr=False)
    _costs: dict[str, CostModel] = field(default_factory=dict, init=False, repr=False)

    def workers(self, model: str) -> int:
        """How many live workers serve ``model``."""
        if self._worker_models is None:
            self._worker_models = live_worker_models(self.session, self.lost_after)
        return sum(1 for models in self._worker_models if serves(models, model))

    def cost(self, model: str) -> CostModel:
        """``model``'s cost figures (``cost_model``)."""
        if model not in self._costs:
            self._costs[model] = cost_model(self.session, model, self.history)
        return self._costs[model]

    def place(self, job: Job) -> Place:
        """``job``'s position, estimate and serving workers."""
        if job.status == JobStatus.RUNNING.value:  # its pipeline call denoises its whole batch
            rate = self.cost(job.model).rate
            total = job.progress_total or job.steps
            call_mpx = job.width * job.height / 1e6 * (job.batch_size or job.num_images)
            return Place(eta_seconds=round(max(0.1, rate * max(0, total - job.progress_step) * call_mpx), 2))
        if job.status != JobStatus.QUEUED.value:
            return Place()
        workers = self.workers(job.model)
        position, ahead_work, running_work = _line(self.session, job)
        if workers == 0:
            return Place(position, None, workers)
        model = self.cost(job.model)
        wait = position * model.overhead + model.rate * (ahead_work + running_work) / 1e6
        own = model.cost(job.steps, job.width, job.height, job.num_images)
        return Place(position, round(max(0.1, wait / workers + own), 2), workers)


_QUEUED, _RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
_AHEAD = and_(  # queued, and claimed before the job: higher priority, or older at the same
    Job.status == _QUEUED,
    Job.id != bindparam("job_id"),
    or_(
        Job.priority > bindparam("priority"),
        and_(Job.priority == bindparam("priority"), Job.created_at < bindparam("created_at")),
        and_(
            Job.priority == bindparam("priority"),
            Job.created_at == bindparam("created_at"),
            Job.id < bindparam("job_id"),
        ),
    ),
)
_LINE = select(
    func.count().filter(_AHEAD),
    func.coalesce(func.sum(Job.steps * Job.width * Job.height * Job.num_images).filter(_AHEAD), 0),
    func.coalesce(
        func.sum((Job.progress_total - Job.progress_step) * Job.width * Job.height * Job.num_images).filter(
            Job.status == _RUNNING
        ),
        0,
    ),
).where(Job.status.in_([_QUEUED, _RUNNING]), Job.model == bindparam("model"))


def _line(session: Session, job: Job) -> tuple[int, float, float]:
    """The queued jobs of ``job``'s model that will be claimed before it, their work
    (steps x pixels x images), and the work left in the model's running jobs: one read of
    the model's queued and running rows."""
    parameters = {
        "job_id": job.id,
        "priority": job.priority,
        "created_at": job.created_at,
        "model": job.model,
    }
    count, ahead_work, running_work = session.execute(_LINE, parameters).one()
    return int(count or 0), float(ahead_work or 0), float(running_work or 0)
