"""A worker's heartbeat: a row in ``workers`` refreshed by a background thread."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Worker, utcnow

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
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.models = list(models)
        self.device = device
        self.interval = interval
        self.current_job_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Record one heartbeat now (creating the row on the first)."""
        now = utcnow()
        with self.sessions() as session:
            updated = session.execute(
                update(Worker)
                .where(Worker.id == self.worker_id)
                .values(
                    last_seen_at=now, current_job_id=self.current_job_id, models=self.models, stopped_at=None
                )
                .execution_options(synchronize_session=False)
            ).rowcount
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

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="easel-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # the database may be briefly away; try again next beat
                log.exception("heartbeat of %s failed", self.worker_id)

    def stop(self) -> None:
        """Stop beating and mark the worker stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        with self.sessions() as session:
            session.execute(
                update(Worker)
                .where(Worker.id == self.worker_id)
                .values(stopped_at=utcnow(), current_job_id=None)
                .execution_options(synchronize_session=False)
            )
            session.commit()
