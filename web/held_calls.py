"""Held calls: requests that stay open while their job runs (``Prefer: wait``, the
OpenAI and AUTOMATIC1111 calls, job event streams), bounded and watched in one place.

Under ``easel web``'s default gevent worker a held call costs a greenlet, not a thread:
thousands fit in one web process beside its ordinary requests and health checks. What
each call waits on is kept here, once per process:

- **The watch.** One keeper (a thread; a greenlet under gevent), running while any call
  is held, reads the state of every held job in one query every ``LOOK_SECONDS`` and
  wakes the calls whose job changed or finished, or whose queue moved (the maintained
  counts of ``queue_turns`` changed: a queued job's position may have). A waiting call
  makes no query and holds no database connection. Past ``LOOK_CALLS`` held calls the
  look comes less often, in proportion (``look_interval``, at most ``MAX_LOOK_SECONDS``),
  so the keeper's share of the process stays flat however many calls it watches.
- **The bounds.** At most ``EASEL_MAX_HELD_CALLS_PER_PROCESS`` calls in this process and
  ``EASEL_MAX_HELD_CALLS_PER_KEY`` per API key (per client address with authentication
  off) across all web processes, every kind together; past either, ``TooManyHeldCalls``
  (``429`` with ``Retry-After``). The per-key bound counts rows of ``held_calls``: a
  call inserts its row and then reads the key's live rows oldest first, so two calls
  opening at once never both pass. The keeper refreshes this process's rows every
  heartbeat; a row whose process died stops counting after ``STALE_HEARTBEATS``.
- **The client.** A call ends as soon as its client hangs up (``client_gone_check``: the
  socket is checked at least every ``GONE_CHECK_SECONDS``), and its slot is free at once.
"""

from __future__ import annotations

import logging
import select as io_select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any

from flask import has_request_context, request
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from easel.shared.errors import EaselError, field_detail
from easel.shared.models import HeldCall as HeldCallRow
from easel.shared.models import Job, JobStatus, QueueTurn, utcnow

log = logging.getLogger(__name__)

LOOK_SECONDS = 0.1  # how often the keeper reads the held jobs' state, up to LOOK_CALLS calls
LOOK_CALLS = 250
MAX_LOOK_SECONDS = 0.5
GONE_CHECK_SECONDS = 0.5  # how often a waiting call checks its client is still there
STALE_HEARTBEATS = 3
READ_CHUNK = 500  # job ids per query of the keeper
TERMINAL = frozenset(s.value for s in JobStatus if s.is_terminal)
QUEUED = JobStatus.QUEUED.value

JobState = tuple[str, int, int | None]  # status, progress step, preview step


class TooManyHeldCalls(EaselError):
    status, code = 429, "too_many_held_calls"
    retry_after = 5


class HeldCall:
    """One held call: its slot and what the keeper last saw of its job."""

    def __init__(self, slot_id: str, owner: str, job_id: str | None, kind: str) -> None:
        self.slot_id, self.owner, self.job_id, self.kind = slot_id, owner, job_id, kind
        self.state: JobState | None = None
        self.finished = threading.Event()
        self._changed = threading.Event()

    def saw(self, state: JobState | None) -> None:
        """The keeper read ``state`` (``None``: the job is gone)."""
        if state != self.state or state is None:
            self.state = state
            self._changed.set()
        if state is None or state[0] in TERMINAL:
            self.finished.set()
            self._changed.set()

    def nudge(self) -> None:
        """Something the job's answer shows changed though its row did not (its queue
        position): wake the call's ``wait_change``."""
        self._changed.set()

    def wait_change(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the job's state to change; whether it did."""
        changed = self._changed.wait(seconds)
        self._changed.clear()
        return changed

    def wait_finished(
        self, seconds: float, gone: Callable[[], bool], clock: Callable[[], float] = time.monotonic
    ) -> bool:
        """Wait up to ``seconds`` for the job to finish, or until the client is gone;
        whether it finished."""
        deadline = clock() + seconds
        while not self.finished.is_set():
            remaining = deadline - clock()
            if remaining <= 0 or gone():
                break
            self.finished.wait(min(GONE_CHECK_SECONDS, remaining))
        return self.finished.is_set()


class HeldCalls:
    """Every held call of this web process: the bounds, the keeper, the slots."""

    def __init__(
        self,
        sessions: Callable[[], AbstractContextManager[Session]],
        per_key: int,
        per_process: int,
        heartbeat: float,
    ) -> None:
        self._sessions = sessions
        self.per_key, self.per_process, self.heartbeat = per_key, per_process, heartbeat
        self._calls: dict[str, HeldCall] = {}
        self._reserved = 0  # calls past the process bound's check, not yet registered
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._marks: dict[str, tuple[Any, ...]] = {}  # the queues' marks at the last look

    def count(self) -> int:
        """Calls held by this process now."""
        with self._lock:
            return len(self._calls)

    @contextmanager
    def held(self, kind: str, owner: str, job_id: str | None) -> Iterator[HeldCall]:
        """Hold a call for ``job_id`` while the block runs (``take`` then ``release``)."""
        call = self.take(kind, owner, job_id)
        try:
            yield call
        finally:
            self.release(call)

    def take(self, kind: str, owner: str, job_id: str | None) -> HeldCall:
        """Take a slot for a held call; raises ``TooManyHeldCalls`` past a bound. The
        caller must ``release`` it. A call taken before its job exists (``job_id`` None:
        the OpenAI and AUTOMATIC1111 calls, refused before they submit) is watched once
        its ``job_id`` is set."""
        with self._lock:
            if len(self._calls) + self._reserved >= self.per_process:
                raise TooManyHeldCalls(
                    f"this web process holds {self.per_process} calls already "
                    "(EASEL_MAX_HELD_CALLS_PER_PROCESS); retry shortly"
                    + (f", or poll GET /api/v1/jobs/{job_id}" if job_id else ""),
                    [field_detail("held_calls", "the web process is at its bound", self.per_process)],
                )
            self._reserved += 1
        try:
            with self._sessions() as session:
                slot_id = open_slot(session, owner, job_id, kind, self.per_key, self.heartbeat)
        finally:
            with self._lock:
                self._reserved -= 1
        call = HeldCall(slot_id, owner, job_id, kind)
        with self._lock:
            self._calls[slot_id] = call
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="easel-held-calls", daemon=True)
                self._keeper.start()
        return call

    def release(self, call: HeldCall) -> None:
        """End a held call: its slot is free at once."""
        with self._lock:
            self._calls.pop(call.slot_id, None)
        try:
            with self._sessions() as session:
                session.execute(delete(HeldCallRow).where(HeldCallRow.id == call.slot_id))
                session.commit()
        except Exception:  # the row goes stale and stops counting: never fail the response
            log.warning("could not delete held call %s; it expires", call.slot_id, exc_info=True)

    def close(self) -> None:
        """Release every call still held (the keeper then stops)."""
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            self.release(call)

    def _keep(self) -> None:
        """The keeper: look at the held jobs until no call is held."""
        touched = time.monotonic()
        while True:
            time.sleep(look_interval(self.count()))
            with self._lock:
                calls = list(self._calls.values())
                if not calls:
                    self._keeper = None
                    return
            try:
                self._look(calls)
                if time.monotonic() - touched >= self.heartbeat:
                    self._touch(calls)
                    touched = time.monotonic()
            except Exception:  # a database blip: the calls wait on, the next look retries
                log.warning("could not read the held jobs", exc_info=True)

    def _look(self, calls: list[HeldCall]) -> None:
        """Read every held job's state in one query (per ``READ_CHUNK`` ids); wake the
        calls whose job changed or finished."""
        # The ids are read once: a call's job may be set while the query runs (it is read
        # at the next look), and a job the query did not ask for must not read as gone.
        watched = [(call, call.job_id) for call in calls if call.job_id]
        job_ids = sorted({job_id for _, job_id in watched})
        states: dict[str, JobState] = {}
        models: dict[str, str] = {}
        with self._sessions() as session:
            for start in range(0, len(job_ids), READ_CHUNK):
                rows = session.execute(
                    select(Job.id, Job.status, Job.progress_step, Job.preview_step, Job.model).where(
                        Job.id.in_(job_ids[start : start + READ_CHUNK])
                    )
                )
                for row in rows:
                    states[row[0]] = (row[1], row[2], row[3])
                    models[row[0]] = row[4]
            queued = {models[job_id] for job_id, state in states.items() if state[0] == QUEUED}
            moved = self._queues_moved(session, queued)
        for call, job_id in watched:
            call.saw(states.get(job_id))
            if job_id in models and models[job_id] in moved:
                call.nudge()  # its queue position may have changed

    def _queues_moved(self, session: Session, models: set[str]) -> set[str]:
        """The models among ``models`` whose queue moved since the last look: the
        maintained counts and turns of ``queue_turns`` (a row per key and priority, not per
        job) changed, so a queued job's position may have."""
        marks: dict[str, tuple[Any, ...]] = {}
        if models:
            rows = session.execute(
                select(QueueTurn.model, func.sum(QueueTurn.queued), func.max(QueueTurn.turn))
                .where(QueueTurn.model.in_(sorted(models)))
                .group_by(QueueTurn.model)
            )
            marks = {row[0]: (row[1], row[2]) for row in rows}
        moved = {model for model in models if self._marks.get(model) != marks.get(model)}
        self._marks = marks
        return moved

    def _touch(self, calls: list[HeldCall]) -> None:
        """Keep this process's slots live (one statement per ``READ_CHUNK`` slots)."""
        slot_ids = [call.slot_id for call in calls]
        with self._sessions() as session:
            now = utcnow()
            for start in range(0, len(slot_ids), READ_CHUNK):
                session.execute(
                    update(HeldCallRow)
                    .where(HeldCallRow.id.in_(slot_ids[start : start + READ_CHUNK]))
                    .values(seen_at=now)
                )
            session.commit()


def look_interval(held: int) -> float:
    """Seconds between the keeper's looks with ``held`` calls: ``LOOK_SECONDS`` up to
    ``LOOK_CALLS``, then growing with the calls (a look reads every held job), up to
    ``MAX_LOOK_SECONDS``."""
    return min(MAX_LOOK_SECONDS, LOOK_SECONDS * max(1.0, held / LOOK_CALLS))


def open_slot(
    session: Session, owner: str, job_id: str | None, kind: str, bound: int, heartbeat: float
) -> str:
    """Take one of ``owner``'s ``bound`` slots; its id. Raises ``TooManyHeldCalls``.

    The row goes in first, then the owner's live rows are read oldest first: a call that
    is not among the first ``bound`` gives its row back."""
    now = utcnow()
    stale = now - timedelta(seconds=heartbeat * STALE_HEARTBEATS)
    session.execute(delete(HeldCallRow).where(HeldCallRow.owner == owner, HeldCallRow.seen_at < stale))
    slot = HeldCallRow(owner=owner, job_id=job_id or "", kind=kind, opened_at=now, seen_at=now)
    session.add(slot)
    session.commit()
    live = session.scalars(
        select(HeldCallRow.id)
        .where(HeldCallRow.owner == owner, HeldCallRow.seen_at >= stale)
        .order_by(HeldCallRow.opened_at, HeldCallRow.id)
        .limit(bound)
    ).all()
    if slot.id in live:
        return slot.id
    session.execute(delete(HeldCallRow).where(HeldCallRow.id == slot.id))
    session.commit()
    raise TooManyHeldCalls(
        f"this key already has {bound} held calls open (waits, OpenAI and AUTOMATIC1111 calls, "
        "event streams: EASEL_MAX_HELD_CALLS_PER_KEY); wait for one to end"
        + (f", or poll GET /api/v1/jobs/{job_id}" if job_id else ""),
        [field_detail("held_calls", f"at most {bound} held calls per key", bound)],
    )


def holder_id(auth_enabled: bool, owner_id: str | None) -> str:
    """Whose bound a held call counts against: the API key's owner, or the client's
    address with authentication off."""
    if auth_enabled and owner_id:
        return owner_id
    return f"addr:{request.remote_addr}"


def client_gone_check() -> Callable[[], bool]:
    """A check that the client of the current request has closed its connection: the
    socket gunicorn hands the app (``gunicorn.socket``) reads as closed. A held call
    writes nothing while it waits, so without this a client that left would be noticed
    only when the answer is written. Outside gunicorn (tests' client, another server) it
    never says gone."""
    sock: Any = request.environ.get("gunicorn.socket") if has_request_context() else None
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
