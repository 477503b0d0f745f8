"""The webhook task, consumed by `easel webhooks` (threads, never on a GPU worker)."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Task
from sqlalchemy.orm import sessionmaker

from easel.shared.db import engine_for
from easel.shared.queue import DELIVER_WEBHOOK_TASK
from easel.shared.settings import get_settings
from easel.worker.celery_app import app
from easel.worker.webhooks import WebhookDeliverer

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def get_deliverer() -> WebhookDeliverer | None:
    settings = get_settings()
    if settings.webhook_secret is None:
        return None
    return WebhookDeliverer(
        sessions=sessionmaker(engine_for(settings.database_url), expire_on_commit=False),
        secret=settings.webhook_secret.get_secret_value(),
        public_url=settings.public_url,
        timeout=settings.webhook_timeout_seconds,
        allow_private=settings.webhook_allow_private,
    )


def retry_delay(attempt: int, base: float) -> float:
    """Seconds before retry number ``attempt`` (1-based): base, 2*base, 4*base, ..."""
    return base * 2.0 ** (attempt - 1)


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_webhook(self: Task[[str], bool | None], job_id: str) -> bool | None:
    """Deliver ``job_id``'s webhook; retried with exponential backoff until it lands or
    ``EASEL_WEBHOOK_MAX_ATTEMPTS`` is reached."""
    deliverer = get_deliverer()
    if deliverer is None:
        log.error("webhook of job %s dropped: EASEL_WEBHOOK_SECRET is not set", job_id)
        return None
    outcome = deliverer.deliver(job_id)
    if outcome is False:
        settings = get_settings()
        attempt = self.request.retries + 1
        if attempt >= settings.webhook_max_attempts:
            log.error(
                "webhook of job %s abandoned after %d attempts", job_id, attempt, extra={"job_id": job_id}
            )
            return False
        raise self.retry(countdown=retry_delay(attempt, settings.webhook_backoff_seconds))
    return outcome
