"""Webhook delivery: POST the signed job object to the job's ``webhook_url``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import requests
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.jobs import describe
from easel.shared.models import Job, JobStatus, utcnow
from easel.shared.netsafety import UnsafeUrl, check_public_url
from easel.worker.signing import DELIVERY_HEADER, EVENT_HEADER, signed_headers

log = logging.getLogger(__name__)


@dataclass
class WebhookDeliverer:
    """Delivers one attempt; the caller (a Celery task) schedules retries with backoff."""

    sessions: sessionmaker[Session]
    secret: str
    public_url: str
    timeout: float = 10.0
    allow_private: bool = False

    def output_url(self, job: Job, index: int) -> str:
        return f"{self.public_url}/api/v1/jobs/{job.id}/outputs/{index}"

    def deliver(self, job_id: str) -> bool | None:
        """``True`` delivered, ``False`` failed (retry), ``None`` nothing to deliver."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None or not job.webhook_url or job.webhook_delivered_at is not None:
                return None
            if not JobStatus(job.status).is_terminal:
                return None
            url = job.webhook_url
            body = json.dumps(describe(job, self.output_url).model_dump(mode="json")).encode()
            event = f"job.{job.status}"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Easel-Webhook/1",
            EVENT_HEADER: event,
            DELIVERY_HEADER: job_id,
            **signed_headers(self.secret, body),
        }
        error: str | None = None
        try:
            check_public_url(url, self.allow_private)
            response = requests.post(
                url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code} from receiver"
        except UnsafeUrl as exc:
            error = f"refused: {exc}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        self._record(job_id, error)
        if error:
            log.warning("webhook of job %s failed: %s", job_id, error, extra={"job_id": job_id})
            return False
        log.info("webhook of job %s delivered", job_id, extra={"job_id": job_id})
        return True

    def _record(self, job_id: str, error: str | None) -> None:
        values: dict[str, object] = {"webhook_attempts": Job.webhook_attempts + 1, "webhook_error": error}
        if error is None:
            values["webhook_delivered_at"] = utcnow()
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            session.commit()
