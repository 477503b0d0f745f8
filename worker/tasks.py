"""The Celery boundary: thin tasks that take ids, in apps built for their consumer.

``make_gpu_app`` is what ``easel worker`` consumes: its task only wakes the claim loop
(the broker carries wake-ups, the claim decides what runs). ``make_webhook_app`` is
what ``easel webhooks`` consumes: deliveries with exponential backoff, away from the
GPUs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, Task
from sqlalchemy.orm import sessionmaker

from easel.shared.db import engine_for
from easel.shared.queue import DELIVER_WEBHOOK_TASK, RUN_JOB_TASK, WEBHOOK_QUEUE, make_celery
from easel.shared.settings import Settings
from easel.worker import metrics as worker_metrics
from easel.worker.signing import secret_key
from easel.worker.webhooks import OwnerBusy, OwnerSlots, WebhookDeliverer

log = logging.getLogger(__name__)

OWNER_BUSY_COUNTDOWN = 1.0  # seconds before a delivery deferred for its owner's share is sent again


def make_gpu_app(settings: Settings, wake: Callable[[], None]) -> Celery:
    """A Celery app whose wake-up task calls ``wake``."""
    app = make_celery(settings)

    @app.task(name=RUN_JOB_TASK)
    def run_job(job_id: str) -> None:
        """Wake-up for ``job_id``. The id is a hint only: the claim loop claims the best
        queued job, so duplicate or reordered wake-ups are harmless."""
        wake()

    return app


def retry_delay(attempt: int, base: float) -> float:
    """Seconds before retry number ``attempt`` (1-based): base, 2*base, 4*base, ..."""
    return base * 2.0 ** (attempt - 1)


def make_webhook_app(settings: Settings) -> Celery:
    """A Celery app whose task delivers a finished job's webhook, retried with backoff
    until it lands or ``EASEL_WEBHOOK_MAX_ATTEMPTS`` is reached."""
    app = make_celery(settings)
    if settings.webhook_secret is not None:
        secret_key(settings.webhook_secret.get_secret_value())  # a malformed whsec_ fails here, at start
    deliverer = (
        WebhookDeliverer(
            sessions=sessionmaker(engine_for(settings.database_url), expire_on_commit=False),
            secret=settings.webhook_secret.get_secret_value(),
            public_url=settings.public_url,
            timeout=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private,
            slots=OwnerSlots(settings.webhook_concurrency_per_owner),
        )
        if settings.webhook_secret is not None
        else None
    )

    @app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, max_retries=None)
    def deliver_webhook(
        self: Task[[str, str], bool | None], job_id: str, event: str = "completed"
    ) -> bool | None:
        if deliverer is None:
            log.error("webhook of job %s dropped: EASEL_WEBHOOK_SECRET is not set", job_id)
            worker_metrics.observe_webhook(event, "abandoned")
            return None
        try:
            outcome = deliverer.deliver(job_id, event)
        except OwnerBusy:
            # The owner has its share of slots here: send it again shortly, the same attempt.
            worker_metrics.observe_webhook(event, "deferred")
            app.send_task(
                DELIVER_WEBHOOK_TASK,
                args=(job_id, event),
                countdown=OWNER_BUSY_COUNTDOWN,
                retries=self.request.retries,
                queue=WEBHOOK_QUEUE,
            )
            return None
        if outcome is False:
            attempt = self.request.retries + 1
            if attempt >= settings.webhook_max_attempts:
                log.error(
                    "webhook of job %s abandoned after %d attempts", job_id, attempt, extra={"job_id": job_id}
                )
                worker_metrics.observe_webhook(event, "abandoned")
                return False
            worker_metrics.observe_webhook(event, "failed")
            raise self.retry(countdown=retry_delay(attempt, settings.webhook_backoff_seconds))
        worker_metrics.observe_webhook(event, "delivered" if outcome else "skipped")
        return outcome

    return app
