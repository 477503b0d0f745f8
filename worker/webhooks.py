"""Webhook delivery: POST the signed job object to the job's ``webhook_url``.

Signed per Standard Webhooks (``worker.signing``). Events, as the job asked for them
(``webhook_events``): ``completed`` (the job finished; retried with backoff until it
lands, recorded on the job), ``start`` and ``progress`` (sent once each, never retried,
and dropped when the job has finished by the time they would go: ``completed`` says
more). The ``webhook-id`` is ``<job id>-<event>`` (``-<attempt>`` for ``start``,
``-<step>`` for ``progress``): the same on every retry of one message, so a receiver
can drop duplicates.

The host is resolved once, each address checked (``shared.netsafety``), and the
connection made to a checked address (pinned) while the ``Host`` header, TLS SNI and
certificate check keep the URL's name: a name that resolves elsewhere a moment later
(DNS rebinding) cannot redirect the POST. Redirects are never followed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.jobs import describe, webhook_events
from easel.shared.models import Job, JobStatus
from easel.shared.netsafety import UnsafeUrl, resolve_checked
from easel.shared.transitions import record_webhook_attempt
from easel.worker.signing import EVENT_HEADER, signed_headers

log = logging.getLogger(__name__)


def post_pinned(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    ca_certs: str | None = None,
) -> int:
    """POST ``body`` to ``url`` over a connection to an address checked by
    ``resolve_checked`` (tried in order until one connects); the HTTP status.

    Raises ``UnsafeUrl`` for a refused URL and ``urllib3.exceptions.HTTPError`` for
    network failures. ``ca_certs``: the CA bundle for https (default: certifi's).
    """
    addresses = resolve_checked(url, allow_private)
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {**headers, "Host": parts.netloc.rsplit("@", 1)[-1]}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers.update(urllib3.util.make_headers(basic_auth=credentials))
    last_error: urllib3.exceptions.HTTPError | None = None
    for address in addresses:
        pool: urllib3.HTTPConnectionPool
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                str(address),
                port,
                server_hostname=hostname,  # SNI
                assert_hostname=hostname,  # the certificate must name the host, not the address
                cert_reqs="CERT_REQUIRED",
                ca_certs=ca_certs or certifi.where(),
                maxsize=1,
            )
        else:
            pool = urllib3.HTTPConnectionPool(str(address), port, maxsize=1)
        try:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                assert_same_host=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                preload_content=False,  # the status is the answer; the body is never read
            )
            response.close()
            return response.status
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            last_error = exc  # try the next checked address
        finally:
            pool.close()
    assert last_error is not None
    raise last_error


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

    def preview_url(self, job: Job) -> str:
        return f"{self.public_url}/api/v1/jobs/{job.id}/preview?step={job.preview_step}"

    def deliver(self, job_id: str, event: str = "completed") -> bool | None:
        """``True`` delivered, ``False`` failed (retry), ``None`` nothing to deliver (or an
        intermediate event that failed: those are not retried)."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None or not job.webhook_url or event not in webhook_events(job):
                return None
            terminal = JobStatus(job.status).is_terminal
            if event == "completed" and (not terminal or job.webhook_delivered_at is not None):
                return None
            if event != "completed" and terminal:
                return None  # stale: the completed event says more
            url = job.webhook_url
            view = describe(job, self.output_url, preview_url=self.preview_url)
            body = json.dumps(view.model_dump(mode="json")).encode()
            message_id = {
                "completed": f"{job_id}-completed",
                "start": f"{job_id}-start-{job.attempts}",
                "progress": f"{job_id}-progress-{view.progress.step}",
            }[event]
            label = f"job.{job.status}" if event == "completed" else f"job.{event}"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Easel-Webhook/1",
            EVENT_HEADER: label,
            **signed_headers(self.secret, message_id, body),
        }
        error: str | None = None
        try:
            status = post_pinned(url, body, headers, self.timeout, self.allow_private)
            if not 200 <= status < 300:
                error = f"HTTP {status} from receiver"
        except UnsafeUrl as exc:
            error = f"refused: {exc}"
        except urllib3.exceptions.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if event != "completed":
            if error:
                log.info(
                    "%s webhook of job %s not delivered: %s", event, job_id, error, extra={"job_id": job_id}
                )
            return None if error else True
        self._record(job_id, error)
        if error:
            log.warning("webhook of job %s failed: %s", job_id, error, extra={"job_id": job_id})
            return False
        log.info("webhook of job %s delivered", job_id, extra={"job_id": job_id})
        return True

    def _record(self, job_id: str, error: str | None) -> None:
        with self.sessions() as session:
            record_webhook_attempt(session, job_id, error)
