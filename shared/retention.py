"""Retention: stored outputs, inputs and finished job rows leave after a while.

Three ages, counted from when a job finished (``EASEL_RETENTION_*_DAYS``, 0 keeps
forever): a job's **outputs** (its images), its **inputs** (uploaded image and mask)
and its **row**. Only finished jobs (succeeded, failed, canceled) are ever touched;
every selection and every write is guarded by a final status, so a queued or
running job keeps everything.

One pass (``prune``), per kind, in batches of due jobs:

1. **rows**: delete the job's objects still stored, then its output rows and its row;
2. **outputs**: delete the objects, then mark ``outputs_pruned_at`` (the output rows
   stay: seeds and sizes remain on record, and the API answers 410 Gone for them);
3. **inputs**: delete the image, mask and control image (``shared.kinds.INPUTS``), then
   mark ``inputs_pruned_at`` (410 too).

Objects go before the database says so: a pass cut short leaves rows that the next
pass finds due again, and deleting an object already gone is not an error, so
passes are idempotent. The maintained ``/metrics`` counters (``shared.stats``) do
not move when rows go. Finding due jobs reads partial indexes of the not yet pruned
(``ix_jobs_outputs_due``, ``ix_jobs_inputs_due``) and ``ix_jobs_status_finished``,
so a pass costs what it prunes, not what the history holds.

Workers run a pass every ``EASEL_RETENTION_INTERVAL_SECONDS`` (``Pruner``); a lease
row makes it one worker per interval for the whole deployment. ``easel prune
[--dry-run]`` runs one pass by hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from easel.shared.db import rowcount
from easel.shared.jobs import preview_key
from easel.shared.kinds import INPUT_COLUMNS
from easel.shared.models import Job, JobOutput, Lease, utcnow
from easel.shared.settings import Settings
from easel.shared.stats import TERMINAL
from easel.shared.storage import Storage

log = logging.getLogger(__name__)

Sessions = Callable[[], Session]
OnJob = Callable[[str, str, int], object]  # (kind, job id, objects)
KINDS = ("rows", "outputs", "inputs")
LEASE_NAME = "retention"


def output_key(job_id: str, index: int) -> str:
    """Where the worker stores output ``index`` of a job (``worker.engine.runner``)."""
    return f"jobs/{job_id}/{index}.png"


@dataclass(frozen=True)
class Policy:
    """How many days finished jobs keep each kind; 0 (or less) keeps it forever."""

    outputs_days: float = 30.0
    inputs_days: float = 7.0
    rows_days: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            outputs_days=settings.retention_outputs_days,
            inputs_days=settings.retention_inputs_days,
            rows_days=settings.retention_rows_days,
        )

    @property
    def enabled(self) -> bool:
        return any(days > 0 for days in (self.outputs_days, self.inputs_days, self.rows_days))

    def cutoff(self, kind: str, now: datetime) -> datetime | None:
        """Jobs of ``kind`` that finished before this are due; ``None``: kept forever."""
        days = {"rows": self.rows_days, "outputs": self.outputs_days, "inputs": self.inputs_days}[kind]
        return now - timedelta(days=days) if days > 0 else None


@dataclass
class PruneReport:
    """What a pass pruned (or, dry, would prune): jobs per kind and storage objects."""

    dry_run: bool = False
    rows: int = 0
    outputs: int = 0
    inputs: int = 0
    objects: int = 0
    cutoffs: dict[str, str | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _due(kind: str, cutoff: datetime) -> list[Any]:
    """The conditions that make a job due for ``kind`` (each implies a final status)."""
    finished = (Job.finished_at.is_not(None), Job.finished_at < cutoff, Job.status.in_(TERMINAL))
    if kind == "outputs":  # the terms of the partial index ix_jobs_outputs_due
        return [Job.outputs_pruned_at.is_(None), *finished]
    if kind == "inputs":  # the terms of ix_jobs_inputs_due
        stored = or_(*(getattr(Job, column).is_not(None) for column in INPUT_COLUMNS))
        return [Job.inputs_pruned_at.is_(None), stored, *finished]
    return list(finished)


def _batches(session: Session, kind: str, cutoff: datetime, size: int) -> Iterator[Sequence[Any]]:
    """Due jobs of ``kind`` in (finished_at, id) order, ``size`` at a time. Pages go by
    key, so a dry run (which changes nothing) still walks every due job once."""
    statuses = TERMINAL if kind == "rows" else (None,)
    for status in statuses:  # rows: one ix_jobs_status_finished range per final status
        after: tuple[datetime, str] | None = None
        while True:
            query = select(
                Job.id,
                Job.finished_at,
                Job.num_images,
                *(getattr(Job, column) for column in INPUT_COLUMNS),
                Job.preview_step,
                Job.outputs_pruned_at,
                Job.inputs_pruned_at,
            ).where(*_due(kind, cutoff))
            if status is not None:
                query = query.where(Job.status == status)
            if after is not None:
                query = query.where(
                    Job.finished_at >= after[0],
                    or_(Job.finished_at > after[0], and_(Job.finished_at == after[0], Job.id > after[1])),
                )
            rows = session.execute(query.order_by(Job.finished_at, Job.id).limit(size)).all()
            if not rows:
                break
            yield rows
            after = (rows[-1].finished_at, rows[-1].id)


def _keys(session: Session, kind: str, rows: Sequence[Any]) -> dict[str, list[str]]:
    """The storage keys each job of ``rows`` still has, for ``kind``."""
    keys: dict[str, list[str]] = {row.id: [] for row in rows}
    if kind in ("rows", "outputs"):
        pending = [row for row in rows if row.outputs_pruned_at is None]
        stored = session.execute(
            select(JobOutput.job_id, JobOutput.storage_key).where(
                JobOutput.job_id.in_([r.id for r in pending])
            )
        ).all()
        for row in pending:  # also the usual keys: an interrupted run may have left objects
            keys[row.id] += [output_key(row.id, index) for index in range(max(1, row.num_images))]
            if row.preview_step is not None:  # the live preview goes with the outputs
                keys[row.id].append(preview_key(row.id))
        for job_id, key in stored:
            if key not in keys[job_id]:
                keys[job_id].append(key)
    if kind in ("rows", "inputs"):
        for row in rows:
            if row.inputs_pruned_at is None:
                keys[row.id] += [key for column in INPUT_COLUMNS if (key := getattr(row, column))]
    return keys


def prune(
    sessions: Sessions,
    storage: Storage,
    policy: Policy,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = 200,
    on_job: OnJob | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> PruneReport:
    """One retention pass: prune what is due at ``now`` (default: now).

    ``dry_run`` reports (and passes to ``on_job``) what would go, deleting nothing.
    ``keep_going`` is asked before each batch; returning ``False`` ends the pass early
    (the rest stays due for the next one).
    """
    now = now or utcnow()
    report = PruneReport(dry_run=dry_run)
    rows_gone: set[str] = set()  # a dry run's rows: not listed again for their outputs or inputs
    for kind in KINDS:
        cutoff = policy.cutoff(kind, now)
        report.cutoffs[kind] = cutoff.isoformat() if cutoff else None
        if cutoff is None:
            continue
        with sessions() as reader:
            for rows in _batches(reader, kind, cutoff, batch_size):
                if keep_going is not None and not keep_going():
                    return report
                rows = [row for row in rows if row.id not in rows_gone]
                if not rows:
                    continue
                keys = _keys(reader, kind, rows)
                reader.rollback()  # no read transaction stays open while storage works
                done = _apply(sessions, storage, kind, cutoff, keys, now) if not dry_run else list(keys)
                if dry_run and kind == "rows":
                    rows_gone.update(done)
                setattr(report, kind, getattr(report, kind) + len(done))
                report.objects += sum(len(keys[job_id]) for job_id in done)
                for job_id in done:
                    if on_job is not None:
                        on_job(kind, job_id, len(keys[job_id]))
    if not dry_run and (report.rows or report.outputs or report.inputs):
        log.info(
            "retention pruned %d row(s), the outputs of %d job(s) and the inputs of %d (%d objects)",
            report.rows,
            report.outputs,
            report.inputs,
            report.objects,
        )
    return report


def _apply(
    sessions: Sessions,
    storage: Storage,
    kind: str,
    cutoff: datetime,
    keys: dict[str, list[str]],
    now: datetime,
) -> list[str]:
    """Delete the objects, then record it (or delete the rows); the job ids pruned."""
    storage.delete([key for job_keys in keys.values() for key in job_keys])
    ids = list(keys)
    due = (Job.id.in_(ids), *_due(kind, cutoff))  # still finished and due: never a requeued job
    with sessions() as session:
        if kind == "rows":
            gone = select(Job.id).where(*due)
            session.execute(delete(JobOutput).where(JobOutput.job_id.in_(gone)))
            done = list(session.scalars(delete(Job).where(*due).returning(Job.id)))
        else:
            column = Job.outputs_pruned_at if kind == "outputs" else Job.inputs_pruned_at
            done = list(
                session.scalars(
                    update(Job)
                    .where(*due)
                    .values({column: now})
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                )
            )
        session.commit()
    return done


# ---- the automatic prune ----------------------------------------------------------------


def take_lease(
    session: Session, name: str, holder: str, seconds: float, renew: bool = False, now: datetime | None = None
) -> bool:
    """Take lease ``name`` for ``seconds`` if nobody holds it (or it expired); with
    ``renew``, extend it only if ``holder`` still holds it. Committed; whether taken."""
    now = now or utcnow()
    until = now + timedelta(seconds=seconds)
    held_by_us = Lease.holder == holder
    taken = rowcount(
        session.execute(
            update(Lease)
            .where(Lease.name == name, held_by_us if renew else Lease.until <= now)
            .values(holder=holder, until=until)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    if taken or renew:
        return bool(taken)
    try:  # the first time: no row yet
        session.execute(insert(Lease).values(name=name, holder=holder, until=until))
        session.commit()
    except IntegrityError:  # it exists (held), or another worker made it first
        session.rollback()
        return False
    return True


class Pruner:
    """Runs a retention pass every ``interval`` seconds in a daemon thread, on whichever
    worker takes the lease: one pass per interval across every worker sharing the
    database. The thread never holds the heartbeat up (a long pass is no lost worker)."""

    def __init__(
        self,
        sessions: Sessions,
        storage: Storage,
        policy: Policy,
        holder: str,
        interval: float,
        batch_size: int = 200,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.policy = policy
        self.holder = holder
        self.interval = interval
        self.batch_size = batch_size
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> PruneReport | None:
        """A pass if this worker takes the lease now; ``None`` if another holds it."""
        with self.sessions() as session:
            if not take_lease(session, LEASE_NAME, self.holder, self.interval):
                return None
        report = prune(
            self.sessions, self.storage, self.policy, batch_size=self.batch_size, keep_going=self._renew
        )
        self.passes += 1
        return report

    def _renew(self) -> bool:
        """Keep the lease through a long pass; stop when asked to or when it was lost."""
        if self._stop.is_set():
            return False
        with self.sessions() as session:
            return take_lease(session, LEASE_NAME, self.holder, self.interval, renew=True)

    def start(self) -> None:
        if not self.policy.enabled or self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="easel-retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Try the lease often enough that a pass starts soon after it falls due.
        check = min(self.interval, 60.0)
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # storage or database away: the next check tries again
                log.warning("retention pass failed; will retry", exc_info=True)
            self._stop.wait(check)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
