"""The models catalog in the database: what workers found in their models folders, for
every web process (docs/design.md, principle 14; docs/bring-your-models.md).

In a fleet only the workers hold the files. Each worker scans its ``EASEL_MODELS_DIR``
(``easel.shared.catalog``), and publishes the result here whenever it changes: its own
rows, replaced whole. A web process reads the rows back (``CatalogView``) and validates
jobs against them; it re-reads only when the newest ``published_at`` moved, one indexed
lookup at most every ``refresh_seconds``.

Rows outlive their worker, so a fleet scaled to zero still accepts jobs for its models
(the first job wakes a worker, which serves it). A worker that publishes takes over the
rows of stopped or lost workers that scanned the same folders (``source``), so a file
removed while the old worker was gone leaves the catalog with the next publish.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from easel.shared.models import CatalogEntry, CatalogRescan, Worker, utcnow
from easel.shared.workers import live_since

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogRecord:
    """One file of a catalog as the database keeps it. ``location`` (the path on the
    worker's disk) stays on the worker: it is never published or shown to tenants."""

    kind: str  # checkpoint, diffusers, lora, vae, embedding, controlnet
    name: str
    family: str | None
    architecture: str | None
    format: str
    size_bytes: int
    fingerprint: str
    available: bool = True
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    workers: tuple[str, ...] = ()  # read back: the workers that published it

    def published(self) -> tuple[Any, ...]:
        """What a publish compares: everything but the worker-local fields."""
        return (
            self.kind,
            self.name,
            self.family,
            self.architecture,
            self.format,
            self.size_bytes,
            self.fingerprint,
            self.available,
            self.reason,
            sorted(self.details.items()),
        )


def source_of(roots: Sequence[Path]) -> str:
    """The identity of a set of models folders, shared by the workers that scan them."""
    text = "\n".join(str(Path(root).expanduser().resolve()) for root in roots)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def publish(
    session: Session, worker_id: str, source: str, records: Iterable[CatalogRecord], lost_after: float
) -> int:
    """Replace ``worker_id``'s rows with ``records``, and drop the rows that stopped or
    lost workers of the same ``source`` left. The caller commits. How many rows it wrote."""
    live = select(Worker.id).where(Worker.last_seen_at >= live_since(lost_after), Worker.stopped_at.is_(None))
    session.execute(
        delete(CatalogEntry).where(
            or_(
                CatalogEntry.worker_id == worker_id,
                and_(CatalogEntry.source == source, CatalogEntry.worker_id.not_in(live)),
            )
        )
    )
    now = utcnow()
    rows = [
        {
            "worker_id": worker_id,
            "kind": r.kind,
            "name": r.name,
            "source": source,
            "family": r.family,
            "architecture": r.architecture,
            "format": r.format,
            "size_bytes": r.size_bytes,
            "fingerprint": r.fingerprint,
            "available": r.available,
            "reason": r.reason,
            "details": dict(r.details),
            "published_at": now,
        }
        for r in records
    ]
    if rows:
        session.execute(insert(CatalogEntry), rows)
    return len(rows)


def latest_publish(session: Session) -> datetime | None:
    """When any worker last published (one index lookup): what a web process watches."""
    return session.scalar(select(func.max(CatalogEntry.published_at)))


def read_catalog(session: Session) -> list[CatalogRecord]:
    """Every published file once, by (kind, name), with the workers that have it; where
    workers disagree (one has a broken copy), an available copy wins."""
    rows = session.execute(
        select(CatalogEntry).order_by(CatalogEntry.kind, CatalogEntry.name, CatalogEntry.available.desc())
    ).scalars()
    merged: dict[tuple[str, str], CatalogRecord] = {}
    holders: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        key = (row.kind, row.name)
        holders.setdefault(key, []).append(row.worker_id)
        if key not in merged:
            merged[key] = CatalogRecord(
                kind=row.kind,
                name=row.name,
                family=row.family,
                architecture=row.architecture,
                format=row.format,
                size_bytes=row.size_bytes,
                fingerprint=row.fingerprint,
                available=row.available,
                reason=row.reason,
                details=dict(row.details or {}),
            )
    return [
        CatalogRecord(**{**record.__dict__, "workers": tuple(sorted(holders[key]))})
        for key, record in merged.items()
    ]


class CatalogView:
    """The catalog as a web process sees it: re-read when a worker published since the
    last look, looked at most every ``refresh_seconds``. ``on_change`` gets the new
    records (the registry is rebuilt from them)."""

    def __init__(
        self,
        sessions: Callable[[], Any],
        on_change: Callable[[list[CatalogRecord]], None],
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._on_change = on_change
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._seen: datetime | None = None

    def refresh(self, force: bool = False) -> bool:
        """Look for a newer publish (when due, or ``force``); whether the catalog changed.
        A database error leaves the last catalog in place (logged)."""
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self._refresh:
            return False
        if not self._lock.acquire(blocking=force):
            return False  # another thread is looking
        try:
            self._checked_at = now
            try:
                with self._sessions() as session:
                    latest = latest_publish(session)
                    if latest == self._seen:
                        return False
                    records = read_catalog(session)
            except Exception:
                log.exception("could not read the models catalog; keeping the last one")
                return False
            self._seen = latest
            self._on_change(records)
            return True
        finally:
            self._lock.release()


RESCAN_ALL = "all"


def request_rescan(session: Session) -> datetime:
    """Ask every worker to rescan its models folders now; the request's time. The caller commits."""
    now = utcnow()
    row = session.get(CatalogRescan, RESCAN_ALL)
    if row is None:
        session.add(CatalogRescan(name=RESCAN_ALL, requested_at=now))
    else:
        row.requested_at = now
    return now


def rescan_requested_at(session: Session) -> datetime | None:
    """When a rescan was last asked for (one primary-key lookup)."""
    return session.scalar(select(CatalogRescan.requested_at).where(CatalogRescan.name == RESCAN_ALL))


def wait_for_publish(sessions: Callable[[], Any], since: datetime, timeout: float, poll: float = 0.2) -> bool:
    """Whether some worker published at or after ``since`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            latest = latest_publish(session)
        if latest is not None and latest >= since:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
