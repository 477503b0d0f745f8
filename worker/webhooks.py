"""Webhook delivery: POST the signed job object to the job's ``webhook_url``.

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

from easel.shared.jobs import describe
from easel.shared.models import Job, JobStatus
from easel.shared.netsafety import UnsafeUrl, resolve_checked
from easel.shared.transitions import record_webhook_attempt
from easel.worker.signing import DELIVERY_HEADER, EVENT_HEADER, signed_headers

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
            status = post_pinned(url, body, headers, self.timeout, self.allow_private)
            if not 200 <= status < 300:
                error = f"HTTP {status} from receiver"
        except UnsafeUrl as exc:
            error = f"refused: {exc}"
        except urllib3.exceptions.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        self._record(job_id, error)
        if error:
            log.warning("webhook of job %s failed: %s", job_id, error, extra={"job_id": job_id})
            return False
        log.info("webhook of job %s delivered", job_id, extra={"job_id": job_id})
        return True

    def _record(self, job_id: str, error: str | None) -> None:
        with self.sessions() as session:
            record_webhook_attempt(session, job_id, error)
