"""The job event stream: ``GET /api/v1/jobs/<id>/events`` as ``text/event-stream``.

Events (each ``data`` is the job object, as ``GET /api/v1/jobs/<id>`` answers it):

- ``status``: the status changed (and once on connect);
- ``progress``: the step, the live preview or the queue position changed;
- ``done``: the job finished; the stream then ends.

Each event's ``id`` names the state it shows (``<status>.<step>.<preview step>``; ``done``
for the last), so a client reconnecting with ``Last-Event-ID`` gets only what changed
since: nothing but the end (``204``) after ``done``. A comment line goes out after
``EASEL_EVENT_STREAM_HEARTBEAT_SECONDS`` without an event, so proxies keep the
connection open.

A stream is a held call (``easel.web.held_calls``): it counts against the per-key and
per-process bounds, and it reads its job object only when the process's keeper saw the
job change or its queue move (and at least every ``QUEUED_REFRESH_SECONDS`` while
queued), so an open stream costs no query while its job and its queue are quiet. It ends as soon as its client
hangs up, so a client reconnecting after a network blip (``retry: 2000``) finds its slot
free.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from easel.shared.models import JobStatus
from easel.web.held_calls import client_gone_check

POLL_SECONDS = 0.5
QUEUED_REFRESH_SECONDS = 15.0  # besides the keeper's nudges when the queue moves
QUEUED = JobStatus.QUEUED.value
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)
DONE_ID = "done"


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
    wait: Callable[[float], bool],
    poll: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    gone: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """The event stream of one job: ``read()`` answers its job object (a fresh session
    each call); ``wait(seconds)`` waits up to ``seconds`` for the job to change and says
    whether it did (``HeldCall.wait_change``); ``gone()`` says the client has hung up
    (checked after every wait; default: the request's socket), and the stream then ends."""
    if gone is None:
        gone = client_gone_check()
    last_id = last_event_id or ""
    last_status = last_id.split(".", 1)[0] if last_id else None
    last_position: Any = None
    yield f"retry: {int(poll * 4000)}\n\n"  # reconnect after 2 s when the connection drops
    job = read()
    quiet_since = read_at = clock()
    while True:
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
        while True:
            changed = wait(poll)
            if gone():
                return
            queued_due = job["status"] == QUEUED and clock() - read_at >= QUEUED_REFRESH_SECONDS
            if changed or queued_due or clock() - quiet_since >= heartbeat:
                break
        job = read()
        read_at = clock()
