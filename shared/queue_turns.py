"""The claim order's maintained state: ``queue_turns``, the queue by (model, type, priority,
owner) (docs/design.md, principles 2 and 11).

Claims take jobs by priority, then the owner whose last job started longest ago (or
never), then age. Sorting the queued rows by that order at every claim costs as much as
the queue is long, so the order is kept instead, one ``QueueTurn`` row per owner with
queued jobs at a (model, type, priority):

- ``queued``: how many of its jobs wait there (also what ``/metrics``, ``/admin`` and
  the queue position read instead of counting rows);
- ``head_created``, ``head_id``: its oldest queued job there (``created_at``, ``id``);
- ``turn``: when the owner's last job started (``NEVER`` if none did); the same on
  every row of the owner. Jobs without an owner (``owner_key`` ``''``) never get one.

An index on (model, priority, turn, head_created, head_id) then yields the next owner
at once, and ``ix_jobs_queue`` its first job (``worker.engine.claims``).

The rows change in the transaction that moves the jobs, so they are exactly as true as
the job rows: ``count_inserted`` counts a queued ``Job`` the ORM inserts (a submit;
a test's row), ``joined`` the jobs that go back to the queue, ``left`` the jobs that
leave it (a claim, which also gives their owners their turn, or a cancel). A row goes
when no queued job is left behind it, whatever its count says, and a claim that finds
a row without a job there removes it (``heal``), so rows written around these
functions (a hand-made ``UPDATE``) heal themselves; ``rebuild`` recomputes the table
from the job rows (migration 0012, benchmarks that bulk-insert jobs, and a claim that
finds queued jobs no row knows of).

A new row takes its owner's turn from the job rows (the latest ``started_at``, through
``ix_jobs_owner_started``), as the order was defined; after that every claim moves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapper, Session

from easel.shared.models import Job, JobStatus, QueueTurn, UTCDateTime

NEVER = datetime(1970, 1, 1, tzinfo=UTC)
"""The turn of an owner none of whose jobs ever started: before every real one."""
NO_OWNER = ""
"""The ``owner_key`` of jobs without an owner (authentication off)."""

QUEUED: ColumnElement[str] = literal_column("'queued'", String())
"""``'queued'`` written into the SQL, not bound: the partial indexes of queued jobs
(``ix_jobs_queue``, ``ix_jobs_queue_key``) serve only statements that say so."""
IS_QUEUED = Job.status == QUEUED

TURNS = cast(Table, QueueTurn.__table__)
KEY = (TURNS.c.model, TURNS.c.type, TURNS.c.priority, TURNS.c.owner_key)


class Queued(Protocol):
    """What the queue's state reads of a job (a ``Job``, or a row with these columns)."""

    id: str
    model: str
    type: str
    priority: int
    owner_id: str | None
    created_at: datetime


Key = tuple[str, str, int, str]
"""(model, type, priority, owner_key) of a ``queue_turns`` row."""


def owner_key(owner_id: str | None) -> str:
    return owner_id or NO_OWNER


def key_of(job: Queued) -> Key:
    return (job.model, job.type, job.priority, owner_key(job.owner_id))


def owner_is(owner: str, column: Any = Job.owner_id) -> ColumnElement[bool]:
    """``column`` is the owner of ``owner_key`` ``owner`` (``IS NULL`` for ``''``)."""
    return cast(ColumnElement[bool], column.is_(None) if owner == NO_OWNER else column == owner)


# ---- jobs joining the queue ----------------------------------------------------------------


def count_inserted(_mapper: Mapper[Any], connection: Connection, job: Job) -> None:
    """``after_insert`` of ``Job`` (``QueueTurn.__declare_last__``): count a queued job."""
    if job.status == JobStatus.QUEUED.value:
        _join(connection, [job])


def joined(session: Session, jobs: Sequence[Queued]) -> None:
    """Count ``jobs``, which have just become queued (not committed)."""
    _join(session.connection(), jobs)


def _join(connection: Connection, jobs: Sequence[Queued]) -> None:
    groups: dict[Key, tuple[int, tuple[datetime, str]]] = {}
    for job in jobs:
        key = key_of(job)
        count, head = groups.get(key, (0, (job.created_at, job.id)))
        groups[key] = (count + 1, min(head, (job.created_at, job.id)))
    for (model, job_type, priority, owner), (count, (created, job_id)) in sorted(groups.items()):
        parameters = {
            "q_model": model,
            "q_type": job_type,
            "q_priority": priority,
            "q_owner": owner,
            "q_queued": count,
            "q_head_created": created,
            "q_head_id": job_id,
        }
        connection.execute(_upsert(connection.dialect.name, owner == NO_OWNER), parameters)


@cache
def _upsert(dialect: str, ownerless: bool) -> Any:
    """``INSERT`` a row, or add to the one with the same key (its head: the older)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"no upsert for the {dialect!r} database")
    never = literal(NEVER, UTCDateTime())
    last_start = select(func.max(Job.started_at)).where(Job.owner_id == bindparam("q_owner"))
    turn = never if ownerless else func.coalesce(last_start.scalar_subquery(), never)
    statement = insert(TURNS).values(
        model=bindparam("q_model"),
        type=bindparam("q_type"),
        priority=bindparam("q_priority"),
        owner_key=bindparam("q_owner"),
        queued=bindparam("q_queued"),
        turn=turn,
        head_created=bindparam("q_head_created", type_=UTCDateTime()),
        head_id=bindparam("q_head_id"),
    )
    new = statement.excluded
    older = or_(
        TURNS.c.head_id.is_(None),
        new.head_created < TURNS.c.head_created,
        and_(new.head_created == TURNS.c.head_created, new.head_id < TURNS.c.head_id),
    )
    return statement.on_conflict_do_update(
        index_elements=[column.name for column in KEY],
        set_={
            "queued": TURNS.c.queued + new.queued,
            "head_created": case((older, new.head_created), else_=TURNS.c.head_created),
            "head_id": case((older, new.head_id), else_=TURNS.c.head_id),
        },
    )


# ---- jobs leaving the queue ----------------------------------------------------------------


def left(session: Session, jobs: Sequence[Queued], started_at: datetime | None = None) -> None:
    """Uncount ``jobs``, which have just left the queue (not committed); with
    ``started_at`` they were claimed then, which is their owners' turn now.

    On PostgreSQL the rows are locked first, in one order, before they are read again:
    claims of the same owners wait for each other here (never for a whole claim), and
    each sees the others' committed jobs when it finds the new head. The turn then moves
    on those locked rows only: a row a submit added after the lock (its owner's first
    job at another level) took its turn from the jobs when it was written, and waiting
    for it here, out of that order, could deadlock with a claim or cancel that locked it
    first."""
    groups = Counter(key_of(job) for job in jobs)
    if not groups:
        return
    owners = sorted({owner for *_, owner in groups})
    connection = session.connection()
    dialect = connection.dialect.name
    locked = connection.execute(_LOCK, {"owners": owners}).all() if dialect == "postgresql" else None
    served = [owner for owner in owners if owner != NO_OWNER] if started_at is not None else []
    for key, count in sorted(groups.items()):  # their turn too: one new version of each row
        _recount(connection, key, -count, started_at if key[3] in served else None)
    if not served:
        return
    if locked is None:  # the owners' rows at other models, types and priorities
        connection.execute(_take_turn(dialect), {"owners": served, "now": started_at, "keys": sorted(groups)})
        return
    others = sorted({(row[0], row[1], row[2], row[3]) for row in locked if row[3] in served} - set(groups))
    if others:
        connection.execute(_TAKE_TURN_AT, {"keys": others, "now": started_at})


_LOCK = (
    select(*KEY)
    .where(TURNS.c.owner_key.in_(bindparam("owners", expanding=True)))
    .order_by(*KEY)
    .with_for_update()
)


def _latest_turn(dialect: str) -> Any:
    """The row's turn, or ``now`` if later (clocks of workers may differ)."""
    latest = func.greatest if dialect == "postgresql" else func.max  # SQLite's max of two values
    return latest(TURNS.c.turn, bindparam("now", type_=UTCDateTime()))


_TAKE_TURN_AT = (
    update(TURNS)
    .where(tuple_(*KEY).in_(bindparam("keys", expanding=True)))
    .values(turn=_latest_turn("postgresql"))
)
"""PostgreSQL's ``_take_turn``: on the rows of these keys (locked)."""


@cache
def _take_turn(dialect: str) -> Any:
    return (
        update(TURNS)
        .where(
            TURNS.c.owner_key.in_(bindparam("owners", expanding=True)),
            tuple_(*KEY).not_in(bindparam("keys", expanding=True)),
        )
        .values(turn=_latest_turn(dialect))
    )


def _recount(connection: Connection, key: Key, change: int, started_at: datetime | None = None) -> None:
    """Add ``change`` to the row's count and read its head again from the queued jobs
    (``ix_jobs_queue``), and with ``started_at`` move its turn; remove the row when no
    job is queued behind it."""
    parameters = {**at(*key), "q_change": change, "now": started_at}
    statement = _recount_statement(connection.dialect.name, key[3] == NO_OWNER, started_at is not None)
    row = connection.execute(statement, parameters).first()
    parameters = at(*key)
    if row is None:  # no row: the jobs were written around this module; nothing to take
        return
    if row.head_id is None:
        connection.execute(_delete(connection.dialect.name), parameters)
    elif row.queued < 1:  # counted short (rows written around this module): jobs are left
        connection.execute(_set_queued(connection.dialect.name), {**parameters, "q_queued": 1})


def at(model: str, job_type: str, priority: int, owner: str) -> dict[str, Any]:
    """The parameters of a statement about one row (``first_queued``, ``heal``)."""
    return {"q_model": model, "q_type": job_type, "q_priority": priority, "q_owner": owner}


def pinned(dialect: str, columns: Sequence[Any], values: Sequence[Any]) -> list[ColumnElement[bool]]:
    """``columns`` equal to ``values`` (none NULL). On PostgreSQL written as the row of
    them between itself and itself, which is the same test, so that the planner
    estimates it by its first column alone.

    A claim looks up one (model, type, priority, owner) of the queue: one owner's jobs at
    one level. Given ``priority = 1`` bare, PostgreSQL's planner estimates it from the
    statistics of the last ``ANALYZE``: a level that had no job then (a new priority
    above a deep queue; ``ANALYZE`` follows only after a tenth of the table changed) has
    none as far as it knows, so every index whose columns it bounds looks as good as
    another, and it reads the level through ``ix_jobs_claim`` (status, model, priority),
    every job of it, and sorts them, rather than the owner's first job through
    ``ix_jobs_queue``; and ``queue_turns`` through ``ix_queue_turns_next_any``, every row
    at that priority. A row comparison is estimated by its first column (``type``, whose
    values the statistics know), and only an index with the same columns in that order
    (``ix_jobs_queue``, the primary key of ``queue_turns``) seeks with it."""
    if dialect != "postgresql":
        return [column == value for column, value in zip(columns, values, strict=True)]
    row, bound = tuple_(*columns), tuple_(*values)
    return [row >= bound, row <= bound]


def _this_row(dialect: str) -> list[ColumnElement[bool]]:
    """The row of the ``at`` parameters; on PostgreSQL also its owner bare (its own
    index, ``ix_queue_turns_owner``, reads the owner's few rows) beside ``pinned``."""
    columns = (TURNS.c.type, TURNS.c.priority, TURNS.c.owner_key)
    names = ("q_type", "q_priority", "q_owner")
    values = tuple(bindparam(name, type_=column.type) for name, column in zip(names, columns, strict=True))
    where = [
        TURNS.c.model == bindparam("q_model"),
        *pinned(dialect, columns, values),
    ]
    if dialect == "postgresql":
        where.append(TURNS.c.owner_key == bindparam("q_owner"))
    return where


def first_queued(dialect: str, ownerless: bool, *columns: Any) -> Any:
    """The first queued job (``columns``) of one owner at one (model, type, priority)
    (``ix_jobs_queue``), with the parameters of ``at``. On PostgreSQL the type, priority
    and owner are ``pinned``, and the order names the index's columns (the same order:
    they are fixed); jobs without an owner (``IS NULL``, which a row comparison cannot
    say) are looked up as on SQLite."""
    level: list[Any] = [Job.type, Job.priority]
    values: list[Any] = [
        bindparam("q_type", type_=Job.type.type),
        bindparam("q_priority", type_=Job.priority.type),
    ]
    if ownerless:
        owner = [Job.owner_id.is_(None)]
        dialect = "sqlite"  # equalities, as on SQLite
    else:
        owner = []
        level.append(Job.owner_id)
        values.append(bindparam("q_owner", type_=Job.owner_id.type))
    order = (*level, Job.created_at, Job.id) if dialect == "postgresql" else (Job.created_at, Job.id)
    return (
        select(*columns)
        .where(IS_QUEUED, Job.model == bindparam("q_model"), *pinned(dialect, level, values), *owner)
        .order_by(*order)
        .limit(ONE)
    )


ONE = literal_column("1", Integer())
"""A ``LIMIT`` of 1 written into the SQL, not bound: PostgreSQL plans a prepared statement
once for all its executions (a generic plan) only if that plan looks no costlier than
planning it afresh each time, and reckons a ``LIMIT`` it cannot see as a tenth of the
rows, which ``pinned``'s estimate (every job of the model) makes dear: so it would plan
the claim's statements again at every execution."""


@cache
def _recount_statement(dialect: str, ownerless: bool, served: bool) -> Any:
    values: dict[str, Any] = {
        "queued": TURNS.c.queued + bindparam("q_change"),
        "head_created": first_queued(dialect, ownerless, Job.created_at).scalar_subquery(),
        "head_id": first_queued(dialect, ownerless, Job.id).scalar_subquery(),
    }
    if served:
        values["turn"] = _latest_turn(dialect)
    return (
        update(TURNS).where(*_this_row(dialect)).values(**values).returning(TURNS.c.queued, TURNS.c.head_id)
    )


@cache
def _delete(dialect: str) -> Any:
    return delete(TURNS).where(*_this_row(dialect))


@cache
def _set_queued(dialect: str) -> Any:
    return update(TURNS).where(*_this_row(dialect)).values(queued=bindparam("q_queued"))


def heal(session: Session, row: Any) -> None:
    """A ``queue_turns`` ``row`` (with its ``queued`` as read) behind which a claim found
    no queued job: remove it, unless its count changed meanwhile (a job joined)."""
    statement = _heal(session.get_bind().dialect.name)
    session.execute(statement, {**at(*row[:4]), "q_seen": row.queued})


@cache
def _heal(dialect: str) -> Any:
    return delete(TURNS).where(*_this_row(dialect), TURNS.c.queued == bindparam("q_seen"))


# ---- recomputing -----------------------------------------------------------------------------


def rebuild(session: Session, models: Iterable[str] | None = None) -> None:
    """Recompute the rows of ``models`` (all when ``None``) from the queued jobs (not
    committed): one pass over every queued job of those models (and a probe of each
    owner's last start), so only for a migration, a bulk load, or rows that were written
    around this module. PostgreSQL: the table is locked until the transaction ends, so
    submits and claims wait rather than interleave."""
    models = None if models is None else sorted(set(models))
    if session.get_bind().dialect.name == "postgresql":
        session.connection().exec_driver_sql("LOCK TABLE queue_turns IN EXCLUSIVE MODE")
    wipe = delete(TURNS)
    group = (Job.model, Job.type, Job.priority, Job.owner_id)
    queued = select(
        *group,
        Job.created_at,
        Job.id,
        func.count().over(partition_by=group).label("queued"),
        func.row_number().over(partition_by=group, order_by=(Job.created_at, Job.id)).label("rank"),
    ).where(IS_QUEUED)
    if models is not None:
        queued = queued.where(Job.model.in_(models))
        wipe = wipe.where(TURNS.c.model.in_(models))
    session.execute(wipe)
    heads = queued.subquery()
    rows = session.execute(select(heads).where(heads.c.rank == 1)).all()
    last_start = select(func.max(Job.started_at)).where(Job.owner_id == bindparam("owner"))
    turns = {
        owner: session.scalar(last_start, {"owner": owner}) or NEVER
        for owner in {row.owner_id for row in rows if row.owner_id is not None}
    }
    if rows:
        session.execute(
            TURNS.insert(),
            [
                {
                    "model": row.model,
                    "type": row.type,
                    "priority": row.priority,
                    "owner_key": owner_key(row.owner_id),
                    "queued": row.queued,
                    "turn": turns.get(row.owner_id, NEVER) if row.owner_id is not None else NEVER,
                    "head_created": row.created_at,
                    "head_id": row.id,
                }
                for row in rows
            ],
        )


def orphaned(session: Session, models: Sequence[str] | None) -> bool:
    """Whether a queued job of ``models`` (any when ``None``) has no ``queue_turns`` row:
    only jobs written around this module; asked when no row offers a job, so it costs
    one probe of an empty queue."""
    row = TURNS.alias("row")
    known = (
        select(literal(1))
        .where(
            row.c.model == Job.model,
            row.c.type == Job.type,
            row.c.priority == Job.priority,
            row.c.owner_key == func.coalesce(Job.owner_id, NO_OWNER),
        )
        .exists()
    )
    query = select(Job.id).where(IS_QUEUED, ~known)
    if models is not None:
        query = query.where(Job.model.in_(list(models)))
    return session.execute(query.limit(1)).first() is not None


# ---- what readers count ----------------------------------------------------------------------


def queued_by_type(session: Session) -> list[tuple[str, str, int]]:
    """(type, model, queued jobs) for every (type, model) with queued jobs."""
    rows = session.execute(
        select(TURNS.c.type, TURNS.c.model, func.sum(TURNS.c.queued)).group_by(TURNS.c.type, TURNS.c.model)
    ).all()
    return [(job_type, model, int(count)) for job_type, model, count in rows]


_AT_LEVELS = select(
    func.coalesce(func.sum(TURNS.c.queued).filter(TURNS.c.priority > bindparam("priority")), 0),
    func.coalesce(func.sum(TURNS.c.queued).filter(TURNS.c.priority == bindparam("priority")), 0),
).where(TURNS.c.model == bindparam("model"), TURNS.c.priority >= bindparam("priority"))


def queued_at(session: Session, model: str, priority: int) -> tuple[int, int]:
    """The queued jobs of ``model`` at a higher priority than ``priority``, and at it."""
    higher, same = session.execute(_AT_LEVELS, {"model": model, "priority": priority}).one()
    return int(higher), int(same)
