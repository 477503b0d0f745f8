"""A worker's heartbeat: a row in ``workers`` refreshed by a background thread, which
also runs the recovery sweeps (``worker.sweeper``) and the watchdog of the hard time
limit: a batch that runs past it (a hung kernel, a stuck load) ends the process, so a
supervisor restarts it and the sweeps recover its jobs under the attempt limit."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.db import rowcount
from easel.shared.models import Worker, utcnow
from easel.worker import metrics as worker_metrics
from easel.worker.sweeper import Sweeper

log = logging.getLogger(__name__)


class Heartbeat:
    """Records that ``worker_id`` is alive every ``interval`` seconds, with its current job."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        worker_id: str,
        models: Sequence[str],
        device: str,
        interval: float,
        sweeper: Sweeper | None = None,
        hard_time_limit: float = 0.0,
        compile_states: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.models = list(models)
        self.device = device
        self.interval = interval
        self.sweeper = sweeper
        self.hard_time_limit = hard_time_limit
        self.compile_states = compile_states  # each compiled model's path, for /readyz
        self._current_job_id: str | None = None
        self.busy_since: float | None = None
        self.healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current_job_id(self) -> str | None:
        return self._current_job_id

    @current_job_id.setter
    def current_job_id(self, job_id: str | None) -> None:
        self._current_job_id = job_id
        if job_id is None:
            self.busy_since = None
        else:
            self.busy_since = time.monotonic()

    def beat(self) -> None:
        """Record one heartbeat now (creating the row on the first)."""
        now = utcnow()
        compiled = self.compile_states() if self.compile_states else None
        with self.sessions() as session:
            updated = rowcount(
                session.execute(
                    update(Worker)
                    .where(Worker.id == self.worker_id)
                    .values(
                        last_seen_at=now,
                        current_job_id=self.current_job_id,
                        models=self.models,
                        compile=compiled,
                        stopped_at=None,
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            if not updated:
                session.add(
                    Worker(
                        id=self.worker_id,
                        hostname=socket.gethostname(),
                        models=self.models,
                        device=self.device,
                        current_job_id=self.current_job_id,
                        compile=compiled,
                        started_at=now,
                        last_seen_at=now,
                    )
                )
            session.commit()

    def tick(self) -> None:
        """The watchdog, one beat, then the sweeps (those of lost workers once the
        database has been healthy long enough to tell a lost worker from an outage)."""
        self.watchdog()
        try:
            self.beat()
        except Exception:  # the database may be briefly away; try again next beat
            worker_metrics.set_database_ready(False)
            self.healthy_since = None
            log.warning("heartbeat of %s failed; will retry", self.worker_id, exc_info=True)
            return
        worker_metrics.set_database_ready(True)
        now = time.monotonic()
        if self.healthy_since is None:
            self.healthy_since = now
        if self.sweeper is None:
            return
        try:
            self.sweeper.recover_lost_jobs(stale_too=now - self.healthy_since >= self.sweeper.lost_after)
        except Exception:
            log.warning("recovery sweep failed; will retry", exc_info=True)

    def watchdog(self) -> None:
        """End the process when the batch in hand has run past the hard time limit."""
        busy = self.busy_since
        if self.hard_time_limit and busy is not None and time.monotonic() - busy > self.hard_time_limit:
            log.critical(
                "job %s's batch has run %.0fs, past EASEL_TASK_TIME_LIMIT=%.0fs; exiting so that a "
                "supervisor restarts this worker and its jobs are recovered",
                self.current_job_id,
                time.monotonic() - busy,
                self.hard_time_limit,
            )
            os._exit(70)

    def start(self) -> None:
        """Mark dead predecessors on this host stopped, beat once, then beat in a thread."""
        try:
            self.mark_dead_predecessors()
        except Exception:
            log.warning("could not look for dead workers on this host", exc_info=True)
        self.tick()
        self._thread = threading.Thread(target=self._run, name="easel-heartbeat", daemon=True)
        self._thread.start()

    def mark_dead_predecessors(self) -> int:
        """Mark stopped the workers recorded on this host whose process is gone (killed, or
        a restarted container that reuses the pid), so their jobs are recovered at once
        rather than after ``EASEL_WORKER_LOST_AFTER_SECONDS``. How many were marked."""
        host = socket.gethostname()
        with self.sessions() as session:
            rows = session.execute(
                select(Worker.id).where(
                    Worker.hostname == host, Worker.stopped_at.is_(None), Worker.id != self.worker_id
                )
            ).all()
            dead = [worker_id for (worker_id,) in rows if not process_alive(worker_id)]
            if dead:
                session.execute(
                    update(Worker)
                    .where(Worker.id.in_(dead), Worker.stopped_at.is_(None))
                    .values(stopped_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                log.warning("workers gone from this host marked stopped: %s", ", ".join(dead))
        return len(dead)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        """Stop beating and mark the worker stopped (its running job, if any, is then
        requeued by the next sweep of another worker)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        try:
            with self.sessions() as session:
                session.execute(
                    update(Worker)
                    .where(Worker.id == self.worker_id)
                    .values(stopped_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                session.commit()
        except Exception:
            log.warning("could not mark worker %s stopped", self.worker_id, exc_info=True)


def process_alive(worker_id: str) -> bool:
    """Whether the process of a worker id on this host (``host:pid[:token]``) still runs.
    A pid equal to ours under another id is a predecessor in a restarted container."""
    parts = worker_id.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return True  # not an id we can judge: leave it to the heartbeat timeout
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
