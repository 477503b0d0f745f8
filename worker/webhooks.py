"""Webhook delivery: POST the signed job object to the job's ``webhook_url``.

Signed per Standard Webhooks (``worker.signing``). Events, as the job asked for them
(``webhook_events``): ``completed`` (the job finished; retried with backoff until it
lands, recorded on the job), ``start`` and ``progress`` (sent once each, never retried,
and dropped when the job has finished by the time they would go: ``completed`` says
more). The ``webhook-id`` is ``<job id>-<event>`` (``-<attempt>`` for ``start``,
``-<step>`` for ``progress``): the same on every retry of one message, so a receiver
can drop duplicates.

Each attempt has one wall-clock deadline (``EASEL_WEBHOOK_TIMEOUT_SECONDS``) for the
lookup, connect, TLS, sending, and the receiver's status line and headers together: a
watchdog cuts the socket when it passes, so a receiver that trickles a byte every few
seconds cannot hold a sender thread. One owner holds at most
``EASEL_WEBHOOK_CONCURRENCY_PER_OWNER`` deliveries at once in a sender process
(``OwnerSlots``); its others are sent again a moment later (``OwnerBusy``), so its slow
receivers delay only its own deliveries.

The host is resolved once, each address checked (``shared.netsafety``), and the
connection made to a checked address (pinned) while the ``Host`` header, TLS SNI and
certificate check keep the URL's name: a name that resolves elsewhere a moment later
(DNS rebinding) cannot redirect the POST. Redirects are never followed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
import urllib3.connection
from sqlalchemy.orm import Session, sessionmaker

from easel.shared import tracing
from easel.shared.jobs import describe, webhook_events
from easel.shared.models import Job, JobStatus
from easel.shared.netsafety import UnsafeUrl, resolve_checked
from easel.shared.transitions import record_webhook_attempt
from easel.worker.signing import EVENT_HEADER, signed_headers

log = logging.getLogger(__name__)


class DeliveryTimeout(urllib3.exceptions.TimeoutError):
    """The attempt's wall-clock deadline passed (connect, headers and body together)."""


class OwnerBusy(Exception):
    """The job's owner already has its share of delivery slots in this process: send the
    message again a moment later (not a failed attempt)."""


class OwnerSlots:
    """At most ``per_owner`` deliveries of one owner at once in this process, so one
    owner's slow receivers hold only that owner's share of the sender's threads."""

    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}

    def take(self, owner: str) -> bool:
        with self._lock:
            if self._busy.get(owner, 0) >= self.per_owner:
                return False
            self._busy[owner] = self._busy.get(owner, 0) + 1
            return True

    def give(self, owner: str) -> None:
        with self._lock:
            left = self._busy.get(owner, 0) - 1
            if left > 0:
                self._busy[owner] = left
            else:
                self._busy.pop(owner, None)

    def busy(self, owner: str) -> int:
        with self._lock:
            return self._busy.get(owner, 0)


class _Tracked(urllib3.connection.HTTPConnection):
    """Keeps the TCP socket it made, so a watchdog can cut it (even mid TLS handshake)."""

    raw: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        self.raw = super()._new_conn()
        return self.raw


class _TrackedHTTPS(urllib3.connection.HTTPSConnection):
    raw: socket.socket | None = None

    def _new_conn(self) -> socket.socket:
        self.raw = super()._new_conn()
        return self.raw


def _cut(connection: _Tracked | _TrackedHTTPS, fired: threading.Event) -> None:
    """The deadline passed: shut the socket down, which ends a blocked connect, send or
    read at once (a per-read timeout would not: a byte every few seconds resets it)."""
    fired.set()
    for sock in (connection.sock, connection.raw):
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain call, also on TLS


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

    ``timeout`` is a wall-clock deadline for the whole attempt (lookup, connect, TLS,
    sending, and the status line and headers), kept by a watchdog that cuts the socket.
    Raises ``UnsafeUrl`` for a refused URL and ``urllib3.exceptions.HTTPError`` for
    network failures (``DeliveryTimeout`` past the deadline). ``ca_certs``: the CA
    bundle for https (default: certifi's).
    """
    deadline = time.monotonic() + timeout
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
        left = deadline - time.monotonic()
        if left <= 0:
            break
        connection: _Tracked | _TrackedHTTPS
        if parts.scheme == "https":
            connection = _TrackedHTTPS(
                str(address),
                port,
                timeout=left,
                server_hostname=hostname,  # SNI
                assert_hostname=hostname,  # the certificate must name the host, not the address
                cert_reqs="CERT_REQUIRED",
                ca_certs=ca_certs or certifi.where(),
            )
        else:
            connection = _Tracked(str(address), port, timeout=left)
        fired = threading.Event()
        watchdog = threading.Timer(left, _cut, (connection, fired))
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.connect()
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()  # the status line and headers; never the body
            if fired.is_set():  # cut mid-answer: "HTTP/1.1 200" without its end is no answer
                break
            return response.status
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as exc:
            if fired.is_set():
                break
            last_error = exc  # try the next checked address
        except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
            if fired.is_set() or time.monotonic() >= deadline:
                break
            if isinstance(exc, urllib3.exceptions.HTTPError):
                raise
            if isinstance(exc, ssl.SSLError):
                raise urllib3.exceptions.SSLError(exc) from None
            raise urllib3.exceptions.ProtocolError(f"{type(exc).__name__}: {exc}") from None
        finally:
            watchdog.cancel()
            connection.close()
    if last_error is not None and time.monotonic() < deadline:
        raise last_error
    raise DeliveryTimeout(f"no complete answer within the {timeout:g} s deadline")


@dataclass
class WebhookDeliverer:
    """Delivers one attempt; the caller (a Celery task) schedules retries with backoff."""

    sessions: sessionmaker[Session]
    secret: str
    public_url: str
    timeout: float = 10.0
    allow_private: bool = False
    slots: OwnerSlots = field(default_factory=lambda: OwnerSlots(2))

    def output_url(self, job: Job, index: int) -> str:
        return f"{self.public_url}/api/v1/jobs/{job.id}/outputs/{index}"

    def preview_url(self, job: Job) -> str:
        return f"{self.public_url}/api/v1/jobs/{job.id}/preview?step={job.preview_step}"

    def deliver(self, job_id: str, event: str = "completed") -> bool | None:
        """``True`` delivered, ``False`` failed (retry), ``None`` nothing to deliver (or an
        intermediate event that failed: those are not retried). Raises ``OwnerBusy`` when
        the job's owner already has ``slots.per_owner`` deliveries in flight here."""
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
            owner = job.owner_id or ""  # no owner (authentication off): one shared owner
            trace_parent = job.trace_parent
        if not self.slots.take(owner):
            raise OwnerBusy(owner)
        started = time.time_ns()
        outcome: bool | None = None
        try:
            outcome = self._send(job_id, event, url, body, message_id, label)
            return outcome
        finally:
            self.slots.give(owner)
            attributes = {"easel.event": event, "easel.delivered": bool(outcome)}
            tracing.record("easel.webhook", trace_parent, started, time.time_ns(), attributes)

    def _send(
        self, job_id: str, event: str, url: str, body: bytes, message_id: str, label: str
    ) -> bool | None:
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
