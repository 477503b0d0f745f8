"""Queue-wait and run-time estimates, learned from recent jobs of the same model.

A job's cost is ``overhead + rate * steps * megapixels * images``: ``rate`` (seconds
per step per megapixel-image) and ``overhead`` (load, encode, store) are the medians
over the model's last ``EASEL_ETA_HISTORY_JOBS`` succeeded jobs; a job that ran in a
batch counts the batch's images and shares its overhead with the batch's jobs, so the
rate is what a batched image costs. With no history yet, a prior of 0.5 s per
step-megapixel and 0.2 s of overhead stands in. A hires fix's second pass counts its
denoising steps at its target size's megapixels (``step_megapixels``), and an SD
upscale its steps once per tile, in the rate learned and in the job's own estimate; the
work of the other jobs in its line, summed in SQL from the rows' columns, still leaves a
queued job's second pass and an SD upscale's other tiles out, and counts a running hires
job's second pass at the first pass's size.

- running job: ``rate * remaining steps * megapixels * images``;
- queued job: (cost of the queued jobs ahead of it + what remains of the model's
  running jobs) / live workers serving the model, plus its own cost; ``None`` while
  no live worker serves the model (it waits for one to start).

Nothing here reads the job history or the whole queue (docs/design.md principle 11):
the cost figures read the model's latest ``EASEL_ETA_HISTORY_JOBS`` succeeded rows
through ``ix_jobs_model_finished`` (model, status, finished_at), a bounded rolling
sample that costs the same with a million finished jobs as with twenty. A queued job's
line reads at most ``EXACT_AHEAD`` of the queued jobs ahead of it at higher priorities
and as many at its own, and the model's running jobs, through the status-first
``ix_jobs_claim``, in one statement. With fewer ahead, its position and the work ahead
are exact; with more, the position is estimated (``estimate_ahead``) from the queue's
maintained counts (``easel.shared.queue_turns``) and, within its priority, from its age
between the oldest and the newest queued job there (two index probes), rounded to two
significant digits, and the work ahead is that many jobs of the mean work of those
read. ``QueueEstimates`` places the jobs of one request: it reads the live workers and
each model's cost figures and counts once, and skips the count for a job behind one
already found too far back (``prepare``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from easel.shared import queue_turns
from easel.shared.hires import HiresRef
from easel.shared.models import Job, JobStatus
from easel.shared.sd_upscale import SdUpscaleRef, tile_count
from easel.shared.workers import live_worker_models, serves

PRIOR_RATE = 0.5
PRIOR_OVERHEAD = 0.2
EXACT_AHEAD = 1000
"""Queued jobs ahead of a job read to place it: below this many its position is exact."""


@dataclass(frozen=True)
class CostModel:
    rate: float  # seconds per step per megapixel-image
    overhead: float  # seconds per job outside denoising

    def cost(
        self,
        steps: int,
        width: int,
        height: int,
        images: int,
        hires: dict[str, Any] | None = None,
        sd_upscale: dict[str, Any] | None = None,
    ) -> float:
        work = step_megapixels(steps, width, height, hires, sd_upscale=sd_upscale)
        return self.overhead + self.rate * work * images


def step_megapixels(
    steps: int,
    width: int,
    height: int,
    hires: dict[str, Any] | None,
    left: int | None = None,
    sd_upscale: dict[str, Any] | None = None,
) -> float:
    """One image's denoising work in step-megapixels: ``steps`` at ``width`` x ``height``
    (an SD upscale's, ``sd_upscale``: for each of its tiles of that size), and a hires
    fix's second pass (``hires``, the job row's) at its target size: its denoising steps,
    each over that many more pixels. ``left``: only the last ``left`` steps of both passes
    (a running job's), the second pass's last."""
    if sd_upscale:
        tiled = SdUpscaleRef.model_validate(sd_upscale)
        steps *= tile_count(tiled.output_size, (width, height), tiled.overlap)
    second = HiresRef.model_validate(hires) if hires else None
    later = second.denoising_steps if second is not None else 0
    first = steps if left is None else max(0, left - later)
    after = later if left is None else min(max(0, left), later)
    target = second.width * second.height if second is not None else 0
    return (first * width * height + after * target) / 1e6


_RECENT_SUCCEEDED = (
    select(Job.steps, Job.width, Job.height, Job.num_images, Job.timings, Job.hires, Job.sd_upscale)
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
    for steps, width, height, images, timings, hires, sd_upscale in rows:
        timings = timings or {}
        generate, run = timings.get("generate_seconds"), timings.get("run_seconds")
        # A batched job shares its pipeline call (and the time around it) with the others.
        work = step_megapixels(steps, width, height, hires, sd_upscale=sd_upscale)
        work *= timings.get("batch_images") or images
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
    jobs ahead of it (at most ``EXACT_AHEAD`` at higher priorities and as many at its
    own) and the work left in its model's running jobs.
    """

    session: Session
    history: int
    lost_after: float
    _worker_models: list[list[str]] | None = field(default=None, init=False, repr=False)
    _costs: dict[str, CostModel] = field(default_factory=dict, init=False, repr=False)
    _lines: dict[str, tuple[int, float, float]] = field(default_factory=dict, init=False, repr=False)
    _far: dict[tuple[str, int], tuple[tuple[datetime, str], _Read]] = field(
        default_factory=dict, init=False, repr=False
    )
    _running: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    _ages: dict[tuple[str, int], tuple[datetime | None, datetime | None]] = field(
        default_factory=dict, init=False, repr=False
    )

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
            left = step_megapixels(
                job.steps, job.width, job.height, job.hires, total - job.progress_step, job.sd_upscale
            )
            return Place(eta_seconds=round(max(0.1, rate * left * (job.batch_size or job.num_images)), 2))
        if job.status != JobStatus.QUEUED.value:
            return Place()
        workers = self.workers(job.model)
        position, ahead_work, running_work = self._line(job)
        if workers == 0:
            return Place(position, None, workers)
        model = self.cost(job.model)
        wait = position * model.overhead + model.rate * (ahead_work + running_work) / 1e6
        own = model.cost(job.steps, job.width, job.height, job.num_images, job.hires, job.sd_upscale)
        return Place(position, round(max(0.1, wait / workers + own), 2), workers)

    def prepare(self, jobs: Iterable[Job]) -> None:
        """Place the queued of ``jobs`` oldest first, so that once one is too far back to
        count, the jobs behind it at its priority are estimated without counting."""
        queued = [job for job in jobs if job.status == JobStatus.QUEUED.value]
        for job in sorted(queued, key=lambda job: (job.created_at, job.id)):
            self._line(job)

    def _line(self, job: Job) -> tuple[int, float, float]:
        """``job``'s position, the work of the queued jobs ahead of it and what is left of
        its model's running jobs (work: steps x pixels x images)."""
        if job.id in self._lines:
            return self._lines[job.id]
        level = (job.model, job.priority)
        far = self._far.get(level)
        if far is not None and (job.created_at, job.id) > far[0]:
            line = self._estimate(job, None, far[1])
        else:
            read = _read_line(self.session, job)
            self._running[job.model] = read.running_work
            if read.higher < EXACT_AHEAD and read.same < EXACT_AHEAD:
                line = (read.higher + read.same, read.higher_work + read.same_work, read.running_work)
            else:
                if read.same >= EXACT_AHEAD:
                    self._far[level] = ((job.created_at, job.id), read)
                line = self._estimate(job, read, read)
        self._lines[job.id] = line
        return line

    def _estimate(self, job: Job, read: _Read | None, sample: _Read) -> tuple[int, float, float]:
        """``job``'s line when more than ``EXACT_AHEAD`` are ahead of it (``read``, or
        known to be from ``sample``, another job's read at its priority): the jobs ahead
        at higher priorities (read, or counted), at its own (read, or estimated by age)."""
        higher = sample.higher if sample.higher < EXACT_AHEAD else self._queued_at(job)[0]
        if read is not None and read.same < EXACT_AHEAD:
            same = read.same
        else:
            same = estimate_ahead(job.created_at, self._bounds(job), self._queued_at(job)[1])
        ahead = round_estimate(higher + same) if higher + same >= EXACT_AHEAD else higher + same
        mean = (sample.higher_work + sample.same_work) / max(1, sample.higher + sample.same)
        return ahead, ahead * mean, self._running.get(job.model, sample.running_work)

    def _queued_at(self, job: Job) -> tuple[int, int]:
        level = (job.model, job.priority)
        if level not in self._counts:
            self._counts[level] = queue_turns.queued_at(self.session, job.model, job.priority)
        return self._counts[level]

    def _bounds(self, job: Job) -> tuple[datetime | None, datetime | None]:
        """The oldest and the newest queued job's ``created_at`` at ``job``'s priority."""
        level = (job.model, job.priority)
        if level not in self._ages:
            parameters = {"model": job.model, "priority": job.priority}
            oldest, newest = self.session.execute(_AGES, parameters).one()
            self._ages[level] = (oldest, newest)
        return self._ages[level]


def estimate_ahead(created_at: datetime, bounds: tuple[datetime | None, datetime | None], queued: int) -> int:
    """How many of the ``queued`` jobs at a priority (this one among them) are older than
    one created at ``created_at``, taking them as spread evenly in age between the oldest
    and the newest (``bounds``); at least ``EXACT_AHEAD``, which were read."""
    oldest, newest = bounds
    fraction = 1.0
    if oldest is not None and newest is not None and newest > oldest:
        fraction = (created_at - oldest) / (newest - oldest)
    return max(EXACT_AHEAD, min(queued - 1, round(queued * min(1.0, max(0.0, fraction)))))


def round_estimate(count: int) -> int:
    """An estimated position, to two significant digits (1,234,567 reads 1,200,000), so
    that it reads as one: an exact position is under ``EXACT_AHEAD``."""
    return int(float(f"{count:.2g}"))


_QUEUED, _RUNNING = JobStatus.QUEUED.value, JobStatus.RUNNING.value
_WORK = (Job.steps * Job.width * Job.height * Job.num_images).label("work")


def _ahead(part: int, order: tuple[Any, ...], *where: ColumnElement[bool]) -> Select[int, int]:
    """At most ``limit`` queued jobs of the model: a range of ``ix_jobs_claim`` read in
    its own ``order`` (so no plan prefers reading the table and sorting it)."""
    return (
        select(literal(part).label("part"), _WORK)
        .where(Job.status == _QUEUED, Job.model == bindparam("model"), *where)
        .order_by(*order)
        .limit(bindparam("limit"))
    )


_HIGHER = _ahead(1, (Job.priority, Job.created_at), Job.priority > bindparam("priority")).subquery()
_SAME = _ahead(  # the same priority and older (the range up to its age, then the tie on id), nearest first
    2,
    (Job.created_at.desc(),),
    Job.priority == bindparam("priority"),
    Job.created_at <= bindparam("created_at"),
    or_(Job.created_at < bindparam("created_at"), Job.id < bindparam("job_id")),
).subquery()
_RUNNING_WORK = (
    select(
        literal(3).label("part"),
        ((Job.progress_total - Job.progress_step) * Job.width * Job.height * Job.num_images).label("work"),
    )
    .where(Job.status == _RUNNING, Job.model == bindparam("model"))
    .subquery()
)
_PARTS = union_all(*(select(part.c.part, part.c.work) for part in (_HIGHER, _SAME, _RUNNING_WORK))).subquery()
_LINE = select(_PARTS.c.part, func.count(), func.coalesce(func.sum(_PARTS.c.work), 0)).group_by(_PARTS.c.part)
"""A queued job's line: at most ``limit`` queued jobs of its model ahead at higher
priorities, as many ahead at its own, and the running jobs of its model (each counted
and their work summed), in one statement of index ranges."""
_AGES = select(
    select(func.min(Job.created_at))
    .where(Job.status == _QUEUED, Job.model == bindparam("model"), Job.priority == bindparam("priority"))
    .scalar_subquery(),
    select(func.max(Job.created_at))
    .where(Job.status == _QUEUED, Job.model == bindparam("model"), Job.priority == bindparam("priority"))
    .scalar_subquery(),
)


@dataclass(frozen=True)
class _Read:
    """What ``_LINE`` read of one job's line."""

    higher: int = 0
    higher_work: float = 0.0
    same: int = 0
    same_work: float = 0.0
    running_work: float = 0.0


def _read_line(session: Session, job: Job) -> _Read:
    parameters = {
        "job_id": job.id,
        "priority": job.priority,
        "created_at": job.created_at,
        "model": job.model,
        "limit": EXACT_AHEAD,
    }
    parts = {part: (int(count), float(work)) for part, count, work in session.execute(_LINE, parameters)}
    higher, same, running = (parts.get(part, (0, 0.0)) for part in (1, 2, 3))
    return _Read(higher[0], higher[1], same[0], same[1], running[1])
