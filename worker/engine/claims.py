"""Atomic claims of queued jobs (docs/design.md, principles 2 and 5).

Claim order: priority first; within a priority, owners (API keys) take turns: the
owner whose last job started longest ago (or never) goes first, so one client's
flood does not starve another's single job; then age. A claim takes a head job in that
order plus the queued jobs that share its batch key, up to ``max_images`` images,
so they run in one pipeline call.

The order is read from maintained state, never sorted out of the queue
(``easel.shared.queue_turns``): one row per owner with queued jobs at a (model, type,
priority), holding the owner's turn and its oldest job there, kept by the transactions
that move jobs into and out of the queue. The head is the first job
(``ix_jobs_queue``) of the first such row at the top priority of the served models, in
(turn, oldest job) order (``ix_queue_turns_next``). The companions are the jobs with the
head's batch key (``ix_jobs_queue_key``) of the same rows, owner after owner in that
order (owners tied on their turn, as owners that never ran are, by age), then those of
the lower priorities. So a claim is a few index probes however long the queue is; its
companions look at no more than ``COMPANION_OWNERS`` owners (beyond, the batch runs
with what it found).

PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never wait
on or take the same row. SQLite: a guarded ``UPDATE ... WHERE status = 'queued'``,
which only one writer can win.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Integer, Select, Text, bindparam, cast, func, literal_column, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from easel.shared import queue_turns
from easel.shared.models import Job, UTCDateTime
from easel.shared.params import BATCH_KEY
from easel.shared.queue_turns import IS_QUEUED, NO_OWNER, TURNS, first_queued, owner_is, pinned
from easel.shared.transitions import claim, set_batch_size

BATCH_KEY_COLUMNS = tuple(getattr(Job, name) for name in BATCH_KEY)
"""The row's columns of the batch key (``easel.shared.params.BATCH_KEY``)."""
CLAIM_COLUMNS = (Job.id, Job.num_images, Job.priority, Job.owner_id, Job.created_at, *BATCH_KEY_COLUMNS)
"""What a claim reads of its head job."""

PAGE = 8
"""``queue_turns`` rows read at a time."""
COMPANION_OWNERS = 32
"""The most owners whose jobs a claim looks at for companions."""


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def claim_batch(
    session: Session,
    worker_id: str,
    models: Sequence[str] | None = None,
    max_images: int = 1,
    wait_seconds: float = 0.0,
    poll_seconds: float = 0.02,
) -> list[Job]:
    """Claim the best queued job for ``models`` (all when empty) and the queued jobs
    that share its batch key, up to ``max_images`` images in all; commit.

    The head job is always taken, even if its own images exceed ``max_images``.
    With ``wait_seconds``, a batch that is not full waits that long for compatible
    jobs to arrive. Claimed jobs are ``running`` with ``attempts`` raised by one and
    share one ``batch_id``; ``batch_size`` is the images of the whole batch. The jobs
    in claim order, head first (as the claim's own ``UPDATE ... RETURNING`` read them,
    outputs not loaded); empty when nothing is claimable.
    """
    served = list(models) if models else None
    batch_id = new_batch_id()
    empty: list[Any] = []  # queue_turns rows without a queued job behind them
    claimed = _claim_first_round(session, worker_id, served, max_images, batch_id, empty)
    if not claimed and queue_turns.orphaned(session, served):
        session.rollback()
        queue_turns.rebuild(session, served)  # queued jobs written around the queue's state
        session.commit()
        claimed = _claim_first_round(session, worker_id, served, max_images, batch_id, empty)
    if claimed:
        session.commit()
    else:
        session.rollback()
    if empty:  # after the claim's own locks are gone, so never in their way
        for row in sorted(empty, key=lambda row: tuple(row[:4])):  # the order rows are locked in
            queue_turns.heal(session, row)
        session.commit()
    if not claimed:
        return []
    head, jobs = claimed
    images = sum(job.num_images for job in jobs)
    if images < max_images and wait_seconds > 0:
        deadline = time.monotonic() + wait_seconds
        while images < max_images and time.monotonic() < deadline:
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
            more = _claim_companions(session, worker_id, head, max_images - images, batch_id)
            jobs += more
            images += sum(job.num_images for job in more)
            session.commit()
        _record_batch_size(session, jobs, batch_id)
        session.commit()
    return jobs


def _claim_first_round(
    session: Session,
    worker_id: str,
    models: list[str] | None,
    max_images: int,
    batch_id: str,
    empty: list[Any],
) -> tuple[Any, list[Job]] | None:
    """Mark ours (not committed) the best queued job and the queued jobs that share its
    batch key and fit. The head's row and the jobs marked, head first; ``queue_turns``
    rows found without a queued job are added to ``empty``."""
    for _ in range(10):  # SQLite: lost a race for the head, try the next best job
        head = _head(session, models, empty)
        if head is None:
            return None
        chosen = [
            (head.id, head.num_images),
            *_companions(session, head, max_images - head.num_images),
        ]
        jobs = _mark_ours(session, chosen, worker_id, batch_id, sum(count for _, count in chosen))
        if not jobs or jobs[0].id != head.id:
            session.rollback()
            continue
        if len(jobs) != len(chosen):
            _record_batch_size(session, jobs, batch_id)
        return head, jobs
    return None


# ---- the order: queue_turns rows -------------------------------------------------------------


ROW_COLUMNS = (
    TURNS.c.model,
    TURNS.c.type,
    TURNS.c.priority,
    TURNS.c.owner_key,
    TURNS.c.queued,
    TURNS.c.turn,
    TURNS.c.head_created,
    TURNS.c.head_id,
)
ORDER = (TURNS.c.turn, TURNS.c.head_created, TURNS.c.head_id)
"""Within a priority: the owner served least recently, then the oldest job."""


@cache
def _rows_query(models: bool, one_type: bool, top: bool, after: bool, past_turn: bool) -> Select[Any]:
    """A page of ``queue_turns`` rows in claim order at one priority: ``priority`` bound,
    or the top one (``top``: below ``below`` when bound) of the served ``models`` (all, or
    one ``model`` and ``type`` with ``one_type``); after the row ``after`` (keyset), or
    past every row whose turn is ``past_turn`` or earlier."""
    where: list[Any] = []
    if models:
        where.append(TURNS.c.model.in_(bindparam("models", expanding=True)))
    if one_type:
        where += [TURNS.c.model == bindparam("model"), TURNS.c.type == bindparam("type")]
    if top:
        level = select(func.max(TURNS.c.priority)).where(*where, TURNS.c.priority < bindparam("below"))
        where.append(TURNS.c.priority == level.scalar_subquery())
    else:
        where.append(TURNS.c.priority == bindparam("priority"))
    if after:
        where.append(
            tuple_(*ORDER)
            > tuple_(
                bindparam("after_turn", type_=UTCDateTime()),
                bindparam("after_created", type_=UTCDateTime()),
                bindparam("after_id"),
            )
        )
    if past_turn:
        where.append(TURNS.c.turn > bindparam("past_turn", type_=UTCDateTime()))
    return select(*ROW_COLUMNS).where(*where).order_by(*ORDER).limit(PAGE)


ABOVE_ALL = 2**31 - 1
"""A ``below`` under which every priority is."""


@dataclass
class _Rows:
    """Pages of ``queue_turns`` rows in claim order: of the served ``models`` (``None``:
    all), or of one ``model`` and ``type``."""

    session: Session
    models: list[str] | None = None
    model: str | None = None
    job_type: str | None = None
    _parameters: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.models is not None:
            self._parameters["models"] = self.models
        if self.model is not None:
            self._parameters.update(model=self.model, type=self.job_type)

    def page(
        self,
        priority: int | None,
        below: int = ABOVE_ALL,
        after: Any = None,
        past_turn: datetime | None = None,
    ) -> list[Any]:
        """Rows at ``priority``, or at the top priority under ``below`` when ``None``."""
        parameters = {**self._parameters, "priority": priority, "below": below}
        if after is not None:
            parameters.update(after_turn=after.turn, after_created=after.head_created, after_id=after.head_id)
        if past_turn is not None:
            parameters["past_turn"] = past_turn
        query = _rows_query(
            self.models is not None,
            self.model is not None,
            priority is None,
            after is not None,
            past_turn is not None,
        )
        return list(self.session.connection().execute(query, parameters).all())


# ---- the head ----------------------------------------------------------------------------------


def _head(session: Session, models: list[str] | None, empty: list[Any]) -> Any | None:
    """The best queued job of ``models`` (locked on PostgreSQL): the first job of the first
    row in claim order that has one free; ``None`` when no row has. Rows with no queued
    job at all go to ``empty``."""
    rows = _Rows(session, models=models)
    connection = session.connection()
    below = ABOVE_ALL
    while page := rows.page(None, below):  # the top priority under ``below``
        priority: int = page[0].priority
        while page:
            for row in page:
                job = connection.execute(_first_job(session, row.owner_key == NO_OWNER), _at(row)).first()
                if job is not None:
                    return job
                if _is_empty(session, row):
                    empty.append(row)
            page = rows.page(priority, after=page[-1]) if len(page) == PAGE else []
        below = priority  # the next lower priority
    return None


def _at(row: Any) -> dict[str, Any]:
    return queue_turns.at(row.model, row.type, row.priority, row.owner_key)


def _first_job(session: Session, ownerless: bool) -> Any:
    return _first_job_of(session.get_bind().dialect.name, ownerless)


@cache
def _first_job_of(dialect: str, ownerless: bool) -> Any:
    query = first_queued(dialect, ownerless, *CLAIM_COLUMNS)
    return query.with_for_update(of=Job, skip_locked=True) if dialect == "postgresql" else query


def _is_empty(session: Session, row: Any) -> bool:
    """Whether a row that offered no free job has none queued at all (rather than all of
    them locked by claims in flight, which will uncount them): rows written around
    ``queue_turns``, which ``heal`` removes."""
    dialect = session.get_bind().dialect.name
    if dialect != "postgresql":
        return True
    return session.execute(first_queued(dialect, row.owner_key == NO_OWNER, Job.id), _at(row)).first() is None


# ---- the companions ----------------------------------------------------------------------------


def _same_key(nulls: tuple[bool, ...]) -> list[Any]:
    """The batch key's columns equal to the bound ``k_<name>`` (``IS NULL`` where ``nulls``)."""
    return [
        column.is_(None) if null else column == bindparam(f"k_{name}")
        for name, column, null in zip(BATCH_KEY, BATCH_KEY_COLUMNS, nulls, strict=True)
    ]


@cache
def _same_key_jobs(dialect: str, nulls: tuple[bool, ...], ownerless: bool, want: int) -> Any:
    """Queued jobs with the bound batch key at ``c_priority`` of the owner ``c_owner``,
    other than ``c_head``, of at most ``c_room`` images, in age order (SQLite:
    ``ix_jobs_queue_key``; PostgreSQL: ``_same_key_jobs_pg``)."""
    query: Any
    if dialect == "postgresql" and not ownerless:
        query = _same_key_jobs_pg()
    else:
        query = (
            select(Job.id, Job.num_images, Job.created_at)
            .where(
                IS_QUEUED,
                *_same_key(nulls),
                Job.priority == bindparam("c_priority"),
                owner_is(NO_OWNER) if ownerless else Job.owner_id == bindparam("c_owner"),
                Job.id != bindparam("c_head"),
                Job.num_images <= bindparam("c_room"),
            )
            .order_by(Job.created_at, Job.id)
        )
    query = query.limit(literal_column(str(want), Integer()))  # written in, as queue_turns.ONE
    return query.with_for_update(of=Job, skip_locked=True) if dialect == "postgresql" else query


def _same_key_jobs_pg() -> Any:
    """PostgreSQL's ``_same_key_jobs`` of an owner: that owner's jobs at that level in
    age order through ``ix_jobs_queue`` (type, priority and owner ``pinned``, see
    ``easel.shared.queue_turns.pinned``), the rest of the batch key compared as the text
    of one row, NULLs alike (both sides written by the same types' output functions):
    one test, which no index serves and the planner estimates without statistics.

    Given the key's columns bare, a value the last ``ANALYZE`` never saw (a new step
    count, a new priority) looks like no job at all: the planner then reads the level
    through ``ix_jobs_claim``, the key's every job through ``ix_jobs_queue_key``, or (as
    a row ``IS NOT DISTINCT FROM``, which it splits into columns) the whole table."""
    rest = [
        (name, column)
        for name, column in zip(BATCH_KEY, BATCH_KEY_COLUMNS, strict=True)
        if name not in ("model", "type")
    ]
    level = (Job.type, Job.priority, Job.owner_id)
    names = ("k_type", "c_priority", "c_owner")
    values = tuple(bindparam(name, type_=column.type) for name, column in zip(names, level, strict=True))
    return (
        select(Job.id, Job.num_images, Job.created_at)
        .where(
            IS_QUEUED,
            Job.model == bindparam("k_model"),
            *pinned("postgresql", level, values),
            cast(tuple_(*(column for _, column in rest)), Text)
            == cast(
                tuple_(
                    *(cast(bindparam(f"k_{name}", type_=column.type), column.type) for name, column in rest)
                ),
                Text,
            ),
            Job.id != bindparam("c_head"),
            Job.num_images <= bindparam("c_room"),
        )
        .order_by(*level, Job.created_at, Job.id)
    )


@cache
def _same_key_level_below(nulls: tuple[bool, ...]) -> Any:
    """The highest priority under ``c_priority`` with queued jobs of the bound batch key."""
    return select(func.max(Job.priority)).where(
        IS_QUEUED, *_same_key(nulls), Job.priority < bindparam("c_priority")
    )


@dataclass
class _Companions:
    """The queued jobs with ``head``'s batch key, other than the head, of at most ``room``
    images each, in claim order: at most ``room`` of them."""

    session: Session
    head: Any
    room: int
    probes: int = 0
    _nulls: tuple[bool, ...] = field(default=(), init=False)
    _parameters: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        values = [getattr(self.head, name) for name in BATCH_KEY]
        self._nulls = tuple(value is None for value in values)
        self._parameters = {
            # the NULLs too: PostgreSQL's statement compares them in a row
            **{f"k_{name}": value for name, value in zip(BATCH_KEY, values, strict=True)},
            "c_head": self.head.id,
            "c_room": self.room,
        }

    def find(self) -> list[Any]:
        found: list[Any] = []
        priority: int | None = self.head.priority
        while priority is not None and self.probes < COMPANION_OWNERS:
            found += self._at(priority, self.room - len(found))
            if len(found) >= self.room:
                break
            parameters = {**self._parameters, "c_priority": priority}
            priority = self.session.connection().scalar(_same_key_level_below(self._nulls), parameters)
        return found[: self.room]

    def _at(self, priority: int, want: int) -> list[Any]:
        """The first ``want`` at ``priority``: owner after owner in claim order; owners
        tied on their turn merged by age (an owner whose oldest job there is younger than
        the ``want``-th found cannot add one, nor can the owners after it)."""
        rows = _Rows(self.session, model=self.head.model, job_type=self.head.type)
        found: list[Any] = []
        tied: list[Any] = []  # what the owners of the current turn offer, by age
        turn: Any = None
        after: Any = None
        past: datetime | None = None
        while len(found) < want and self.probes < COMPANION_OWNERS:
            page = rows.page(priority, after=after, past_turn=past)
            after, past = (page[-1] if page else None), None
            for row in page:
                if row.turn != turn:
                    found += tied[: want - len(found)]
                    tied, turn = [], row.turn
                    if len(found) >= want:
                        return found
                need = want - len(found)
                full = len(tied) >= need and row.head_created is not None
                if full and (row.head_created, row.head_id) > _age(tied[need - 1]):
                    after, past = None, turn  # the rest of this turn's owners come later
                    break
                if self.probes >= COMPANION_OWNERS:
                    break
                self.probes += 1
                tied = sorted([*tied, *self._jobs_of(row, priority, need)], key=_age)[:need]
            if len(page) < PAGE and past is None:
                break
        return found + tied[: want - len(found)]

    def _jobs_of(self, row: Any, priority: int, want: int) -> list[Any]:
        dialect = self.session.get_bind().dialect.name
        query = _same_key_jobs(dialect, self._nulls, row.owner_key == NO_OWNER, want)
        parameters = {**self._parameters, "c_priority": priority, "c_owner": row.owner_key}
        return list(self.session.connection().execute(query, parameters).all())


def _age(job: Any) -> tuple[Any, str]:
    return (job.created_at, job.id)


def _companions(session: Session, head: Any, room: int) -> list[tuple[str, int]]:
    """Queued jobs (locked on PostgreSQL) with ``head``'s batch key whose images fit in
    ``room``, in claim order: their (id, images)."""
    if room <= 0:
        return []
    chosen: list[tuple[str, int]] = []
    for job in _Companions(session, head, room).find():
        if job.num_images <= room - sum(count for _, count in chosen):
            chosen.append((job.id, job.num_images))
    return chosen


def _claim_companions(session: Session, worker_id: str, head: Any, room: int, batch_id: str) -> list[Job]:
    """Mark ours (not committed) more queued jobs with ``head``'s batch key that fit in
    ``room``; those jobs."""
    chosen = _companions(session, head, room)
    return _mark_ours(session, chosen, worker_id, batch_id) if chosen else []


# ---- marking -----------------------------------------------------------------------------------


def _mark_ours(
    session: Session,
    chosen: list[tuple[str, int]],
    worker_id: str,
    batch_id: str,
    batch_size: int | None = None,
) -> list[Job]:
    """Mark ``chosen`` running for us (not committed): those that were still queued (on
    SQLite another worker may have taken some between our read and our write), in the
    order of ``chosen``."""
    by_id = {
        job.id: job
        for job in claim(session, [job_id for job_id, _ in chosen], worker_id, batch_id, batch_size)
    }
    return [by_id[job_id] for job_id, _ in chosen if job_id in by_id]


def _record_batch_size(session: Session, jobs: list[Job], batch_id: str) -> None:
    """Record the images of the whole batch on each of ``jobs`` (not committed): on their
    rows and on the loaded objects (which that marks unchanged, so no flush writes it again)."""
    images = sum(job.num_images for job in jobs)
    set_batch_size(session, [job.id for job in jobs], batch_id, images)
    for job in jobs:
        set_committed_value(job, "batch_size", images)


def _locked(session: Session, query: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=Job, skip_locked=True)
    return query
