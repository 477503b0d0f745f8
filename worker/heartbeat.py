"""A worker's heartbeat: a row in ``workers`` refreshed by a background thread, which
also runs the recovery sweeps (``worker.sweeper``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.db import rowcount
from easel.shared.models import Worker, utcnow
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
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.models = list(models)
        self.device = device
        self.interval = interval
        self.sweeper = sweeper
        self._current_job_id: str | None = None
        self.idle_since: float = time.monotonic()
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
            self.idle_since = time.monotonic()

    def beat(self) -> None:
        """Record one heartbeat now (creating the row on the first)."""
        now = utcnow()
        with self.sessions() as session:
            updated = rowcount(
                session.execute(
                    update(Worker)
                    .where(Worker.id == self.worker_id)
                    .values(
                        last_seen_at=now,
                        current_job_id=self.current_job_id,
                        models=self.models,
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
                        started_at=now,
                        last_seen_at=now,
                    )
                )
            session.commit()

    def tick(self) -> None:
        """One beat, then the sweeps once the database has been healthy long enough."""
        try:
            self.beat()
        except Exception:  # the database may be briefly away; try again next beat
            self.healthy_since = None
            log.warning("heartbeat of %s failed; will retry", self.worker_id, exc_info=True)
            return
        now = time.monotonic()
        if self.healthy_since is None:
            self.healthy_since = now
        if self.sweeper is None:
            return
        try:
            if now - self.healthy_since >= self.sweeper.lost_after:
                self.sweeper.recover_lost_jobs()
            if self.current_job_id is None:
                self.sweeper.republish_lost_wakeups(now - self.idle_since)
        except Exception:
            log.warning("recovery sweep failed; will retry", exc_info=True)

    def start(self) -> None:
        self.tick()
        self._thread = threading.Thread(target=self._run, name="easel-heartbeat", daemon=True)
        self._thread.start()

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
