"""The Celery app as the web tier sees it: it sends wake-ups by task name only.

The broker carries job ids, never job data (docs/design.md, principle 1): a lost message is
rebuilt from the database and a duplicate one is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery

from easel.shared.db import sqlite_broker_options
from easel.shared.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "easel.run_job"
DELIVER_WEBHOOK_TASK = "easel.deliver_webhook"
WEBHOOK_QUEUE = "easel.webhooks"


def queue_name(model: str) -> str:
    """One broker queue per model, so a worker subscribes only to what it serves."""
    return f"easel.{model}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for warm GPU workers (acks late, prefetch 1)."""
    app = Celery("easel", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue_name(settings.default_model or "default"),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options=sqlite_broker_options(settings.broker_url),
    )
    return app


def broker_wakes_workers(broker_url: str) -> bool:
    """Whether wake-ups over this broker reach an idle worker sooner than its own poll of
    the database: yes for a server broker such as Redis (delivered at once), no for kombu's
    SQLAlchemy transport (``sqla+``, the embedded broker), which kombu polls once a second
    while an idle worker looks at the database every 0.1 s (``EASEL_IDLE_POLL_SECONDS``).
    There a wake-up would only cost both sides CPU."""
    return not broker_url.startswith("sqla+")


def send_wakeup(app: Celery, job_id: str, model: str) -> bool:
    """Publish a wake-up for ``job_id`` where the broker delivers it faster than the
    workers' poll (``broker_wakes_workers``); ``False`` (logged) if the broker refused it.

    The job row is already committed, so a failed publish loses nothing: the job
    stays ``queued`` and any later wake-up or poll claims it.
    """
    if not broker_wakes_workers(app.conf.broker_url):
        return True
    try:
        app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=queue_name(model),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception:  # broker down: the row is the truth, log and go on
        log.exception("could not publish wake-up for job %s (model %s)", job_id, model)
        return False
    return True


Send = Callable[[str, str], object]
"""Publishes a wake-up: ``(job id, model)``."""
Schedule = Callable[[float, Callable[[], None]], None]
"""Calls a function that many seconds from now, in another thread."""


def _timer(delay: float, call: Callable[[], None]) -> None:
    timer = threading.Timer(delay, call)
    timer.daemon = True  # a wake-up lost at exit costs an idle worker one poll, nothing more
    timer.start()


@dataclass
class WakeupCoalescer:
    """At most one wake-up per model every ``window`` seconds from this process.

    The first submit after a quiet spell publishes at once; the others within the window
    share one wake-up at its end. Each job so still has a wake-up published after its row
    committed (an idle worker claims after it), at most ``window`` later, while a burst of
    submits publishes a few messages instead of one each: a busy worker claims again
    after every batch without them, and each message costs the web, the broker and the
    worker's consumer CPU.
    """

    send: Send
    window: float = 0.05
    clock: Callable[[], float] = time.monotonic
    schedule: Schedule = _timer
    _last: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _due: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def wake(self, job_id: str, model: str) -> None:
        """Wake a worker for ``job_id`` (committed) of ``model``: now, or at the window's end."""
        with self._lock:
            if model in self._due:  # a wake-up is due after this commit: it covers this job
                self._due[model] = job_id
                return
            now = self.clock()
            wait = self._last.get(model, float("-inf")) + self.window - now
            if wait > 0:
                self._due[model] = job_id
            else:
                self._last[model] = now
        if wait > 0:
            try:
                self.schedule(wait, lambda: self._send_due(model))
            except Exception:  # no timer (say, no thread to spare): publish now, never hold it back
                log.warning("could not schedule a wake-up for model %s; publishing now", model)
                self._send_due(model)
        else:
            self.send(job_id, model)

    def _send_due(self, model: str) -> None:
        with self._lock:
            job_id = self._due.pop(model)
            self._last[model] = self.clock()
        self.send(job_id, model)


def send_webhook(app: Celery, job_id: str, event: str = "completed") -> bool:
    """Queue the delivery of ``job_id``'s webhook for ``event`` (``start``, ``progress`` or
    ``completed``) on its own queue, away from the GPUs."""
    try:
        app.send_task(
            DELIVER_WEBHOOK_TASK,
            args=[job_id] if event == "completed" else [job_id, event],
            queue=WEBHOOK_QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception:
        log.exception("could not queue the webhook of job %s", job_id)
        return False
    return True
