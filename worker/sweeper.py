"""Recovery sweeps, run by every live worker from its heartbeat thread.

1. **Lost workers.** A running job whose worker stopped, or whose heartbeat is older
   than ``EASEL_WORKER_LOST_AFTER_SECONDS``, goes back to ``queued`` (its attempts
   were counted when it was claimed) and a wake-up is published; once it has used
   ``EASEL_MAX_ATTEMPTS`` attempts it ends ``failed`` with ``worker_lost`` instead.
   A worker sweeps only after its own database connection has been healthy for that
   long, so an outage that silenced every heartbeat does not look like lost workers.

Lost wake-ups need no sweep: an idle worker looks at the database every
``EASEL_IDLE_POLL_SECONDS`` (``engine.loop``), so a job whose wake-up the broker lost
(Redis restarted empty, a publish failed) still runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.models import Job, JobStatus, Worker, utcnow
from easel.shared.transitions import recover_lost

log = logging.getLogger(__name__)

Publish = Callable[[str, str], object]  # (job id, model)
Notify = Callable[[str], object]  # job id that reached a terminal state


@dataclass
class SweepResult:
    requeued: int = 0
    failed: int = 0


@dataclass
class Sweeper:
    sessions: sessionmaker[Session]
    models: Sequence[str]
    publish: Publish
    notify: Notify | None = None
    max_attempts: int = 3
    lost_after: float = 30.0

    def recover_lost_jobs(self, stale_too: bool = True) -> SweepResult:
        """Requeue (or fail, past the attempt limit) the jobs of lost workers: stopped
        ones always, silent ones only with ``stale_too`` (the caller's database has been
        healthy long enough to tell a silent worker from an outage)."""
        result = SweepResult()
        stale = utcnow() - timedelta(seconds=self.lost_after)
        with self.sessions() as session:
            rows = session.execute(
                select(
                    Job.id,
                    Job.model,
                    Job.worker_id,
                    Job.attempts,
                    Job.cancel_requested,
                    Job.webhook_url,
                )
                .outerjoin(Worker, Worker.id == Job.worker_id)
                .where(
                    Job.status == JobStatus.RUNNING.value,
                    or_(
                        Worker.stopped_at.is_not(None),
                        *(
                            # No heartbeat row at all: give a worker that could not write
                            # its first beat the same grace as a silent one.
                            (and_(Worker.id.is_(None), Job.started_at < stale), Worker.last_seen_at < stale)
                            if stale_too
                            else ()
                        ),
                    ),
                )
                .limit(500)
            ).all()
            for job_id, model, worker_id, attempts, cancel, webhook in rows:
                status = recover_lost(session, job_id, worker_id, attempts, cancel, self.max_attempts)
                if status is None:
                    continue
                if status is JobStatus.QUEUED:
                    result.requeued += 1
                    log.warning(
                        "job %s requeued: worker %s was lost (attempt %d)",
                        job_id,
                        worker_id,
                        attempts,
                        extra={"job_id": job_id},
                    )
                    self.publish(job_id, model)
                else:
                    result.failed += 1
                    log.error(
                        "job %s ended %s: worker %s lost",
                        job_id,
                        status.value,
                        worker_id,
                        extra={"job_id": job_id},
                    )
                    if webhook and self.notify is not None:
                        self.notify(job_id)
        return result
