"""The job event stream: ``GET /api/v1/jobs/<id>/events`` as ``text/event-stream``.

Events (each ``data`` is the job object, as ``GET /api/v1/jobs/<id>`` answers it):

- ``status``: the status changed (and once on connect);
- ``progress``: the step, the live preview or the queue position changed;
- ``done``: the job finished; the stream then ends.

Each event's ``id`` names the state it shows (``<status>.<step>.<preview step>``; ``done``
for the last), so a client reconnecting with ``Last-Event-ID`` gets only what changed
since: nothing but the end (``204``) after ``done``. A comment line goes out after
``EASEL_EVENT_STREAM_HEARTBEAT_SECONDS`` without an event, so proxies keep the
connection open and a client that left is noticed.

The stream polls the job row every ``POLL_SECONDS`` with a session of its own that it
closes before it sleeps: no database connection is held between polls.

Each open stream holds one thread of a gunicorn ``gthread`` worker for its whole life
(docs/deployment.md, "Event streams"). Streams are bounded per API key
(``EASEL_MAX_EVENT_STREAMS_PER_KEY``; per client address when authentication is off)
across all web processes through the ``event_streams`` table: a stream's row is
refreshed at each heartbeat and deleted when it ends; a row its process left behind
stops counting after ``STALE_HEARTBEATS`` heartbeats. A stream ends as soon as its client
hangs up (the socket is checked at every poll), so a client reconnecting after a network
blip (``retry: 2000``) finds its slot free.
"""

from __future__ import annotations

import json
import select as io_select
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from flask import has_request_context, request
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from easel.shared.errors import EaselError, field_detail
from easel.shared.models import EventStream, JobStatus, utcnow

POLL_SECONDS = 0.5
STALE_HEARTBEATS = 3
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)
DONE_ID = "done"


class TooManyStreams(EaselError):
    status, code = 429, "too_many_streams"
    retry_after = 5


# ---- the bound -------------------------------------------------------------------------


def open_slot(session: Session, owner: str, job_id: str, bound: int, heartbeat: float) -> str:
    """Take one of ``owner``'s ``bound`` stream slots; its id. Raises ``TooManyStreams``.

    The row goes in first, then the owner's live rows are read oldest first: a stream
    that is not among the first ``bound`` gives its row back. Two streams opening at once
    thus never both pass the bound."""
    now = utcnow()
    stale = now - timedelta(seconds=heartbeat * STALE_HEARTBEATS)
    session.execute(delete(EventStream).where(EventStream.owner == owner, EventStream.seen_at < stale))
    slot = EventStream(owner=owner, job_id=job_id, opened_at=now, seen_at=now)
    session.add(slot)
    session.commit()
    live = session.scalars(
        select(EventStream.id)
        .where(EventStream.owner == owner, EventStream.seen_at >= stale)
        .order_by(EventStream.opened_at, EventStream.id)
        .limit(bound)
    ).all()
    if slot.id in live:
        return slot.id
    session.execute(delete(EventStream).where(EventStream.id == slot.id))
    session.commit()
    raise TooManyStreams(
        f"this key already has {bound} open event streams (EASEL_MAX_EVENT_STREAMS_PER_KEY); "
        f"close one, or poll GET /api/v1/jobs/{job_id}",
        [field_detail("events", f"at most {bound} open streams per key", bound)],
    )


def touch_slot(session: Session, slot_id: str) -> None:
    session.execute(update(EventStream).where(EventStream.id == slot_id).values(seen_at=utcnow()))
    session.commit()


def close_slot(session: Session, slot_id: str) -> None:
    session.execute(delete(EventStream).where(EventStream.id == slot_id))
    session.commit()


# ---- the stream ------------------------------------------------------------------------


def state_id(job: dict[str, Any]) -> str:
    """The event id of a job object's state (``done`` once it finished)."""
    if job["status"] in TERMINAL:
        return DONE_ID
    preview = job.get("preview") or {}
    return f"{job['status']}.{job['progress']['step']}.{preview.get('step', '')}"


def format_event(event: str, event_id: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def stream(
    read: Callable[[], dict[str, Any]],
    last_event_id: str | None,
    heartbeat: float,
    touch: Callable[[], None],
    poll: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    gone: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The event stream of one job: ``read()`` answers its job object (a fresh session
    each call); ``touch()`` refreshes the stream's slot at each heartbeat; ``gone()``
    says the client has hung up (checked at every poll; default: the request's socket,
    ``client_gone``), and the stream then ends, freeing its slot at once."""
    if gone is None:
        gone = client_gone_check()
    last_id = last_event_id or ""
    last_status = last_id.split(".", 1)[0] if last_id else None
    last_position: Any = None
    quiet_since = touched = clock()
    yield f"retry: {int(poll * 4000)}\n\n"  # reconnect after 2 s when the connection drops
    while True:
        job = read()
        current = state_id(job)
        if current == DONE_ID:
            yield format_event("done", DONE_ID, job)
            return
        if current != last_id or job["queue_position"] != last_position:
            kind = "status" if job["status"] != last_status else "progress"
            yield format_event(kind, current, job)
            last_id, last_status, last_position = current, job["status"], job["queue_position"]
            quiet_since = clock()
        elif clock() - quiet_since >= heartbeat:
            yield ": heartbeat\n\n"
            quiet_since = clock()
        if clock() - touched >= heartbeat:
            touch()  # the slot stays live while the stream is
            touched = clock()
        sleep(poll)
        if gone():
            return


def client_gone_check() -> Callable[[], bool]:
    """A check that the client of the current request has closed its connection: the
    socket gunicorn hands the app (``gunicorn.socket``) reads as closed. A quiet stream
    writes nothing for a heartbeat, so without this a dropped client would be noticed
    (and its slot freed) only at the next write, up to a heartbeat later. Outside
    gunicorn (tests' client, another server) it never says gone."""
    sock = request.environ.get("gunicorn.socket") if has_request_context() else None
    if not isinstance(sock, socket.socket):
        return lambda: False
    return lambda: socket_closed(sock)


def socket_closed(sock: socket.socket) -> bool:
    """True if the peer closed ``sock`` (readable, and a peek reads end of stream or an
    error); data waiting (a pipelined request) is not a hang-up."""
    try:
        readable, _, _ = io_select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
