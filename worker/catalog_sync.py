"""A worker's models folders (``EASEL_MODELS_DIR``): scanned at start, rescanned every
``EASEL_MODELS_RESCAN_SECONDS`` and when someone asks (``easel models rescan``, A1111's
``refresh-checkpoints``), published to the database when they change, and served
(docs/bring-your-models.md).

A rescan reads only the headers of new or changed files (``easel.shared.catalog``). The
registry it yields (the models file's or built-in entries plus the found files, with
their paths) goes to ``apply``, which swaps it into the runner, the heartbeat and the
broker's queues between batches: a file copied in is served without a restart, and a
file removed is no longer claimed for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from easel.shared.catalog import Catalog, scan
from easel.shared.catalog_registry import with_catalog
from easel.shared.catalog_store import CatalogRecord, publish, rescan_requested_at, source_of
from easel.shared.classify import Kind
from easel.shared.db import session_scope
from easel.shared.models import utcnow
from easel.shared.registry import Registry
from easel.shared.settings import Settings

log = logging.getLogger(__name__)

Scanner = Callable[[Sequence[Path], Any], tuple[list[CatalogRecord], Any]]
"""``(roots, previous state) -> (records with their locations, state for the next scan)``."""

REQUEST_POLL_SECONDS = 1.0


class CatalogSync:
    """Scans, publishes and applies one worker's catalog."""

    def __init__(
        self,
        roots: Sequence[Path],
        base: Registry,
        sessions: Callable[[], Any],
        worker_id: str,
        apply: Callable[[Registry], None],
        *,
        scanner: Scanner,
        interval: float,
        lost_after: float,
    ) -> None:
        self.roots = list(roots)
        self.base = base
        self.sessions = sessions
        self.worker_id = worker_id
        self.apply = apply
        self.scanner = scanner
        self.interval = interval
        self.lost_after = lost_after
        self.source = source_of(self.roots)
        self._state: Any = None
        self._published: list[tuple[Any, ...]] | None = None
        self._scanned_at: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped: list[str] = []

    def scan(self, publish_always: bool = False) -> Registry:
        """Scan the folders, publish when the catalog changed (or ``publish_always``), and
        hand the new registry to ``apply``; the registry."""
        self._scanned_at = utcnow()
        records, self._state = self.scanner(self.roots, self._state)
        registry, self.skipped = with_catalog(self.base, records)
        published = sorted(record.published() for record in records)
        if publish_always or published != self._published:
            self._publish(records)
            self._published = published
            log.info(
                "models folders: %d files, %d models served, %d left out",
                len(records),
                len(registry.names()),
                len(self.skipped),
                extra={"skipped": self.skipped[:50]},
            )
        self.apply(registry)
        return registry

    def _publish(self, records: list[CatalogRecord]) -> None:
        """Write the rows (``sessions()`` commits); a failure propagates, and the next scan
        publishes again, since the published state did not move."""
        with self.sessions() as session:
            publish(session, self.worker_id, self.source, records, self.lost_after)

    def start(self) -> None:
        """Rescan in the background: every ``interval`` seconds (0: only when asked)."""
        self._thread = threading.Thread(target=self._run, name="easel-catalog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        last = self._scanned_at
        while not self._stop.wait(REQUEST_POLL_SECONDS):
            try:
                asked = self._requested_since(last)
                due = (
                    self.interval > 0
                    and last is not None
                    and (utcnow() - last).total_seconds() >= self.interval
                )
                if asked or due or last is None:
                    self.scan(publish_always=asked)
                    last = self._scanned_at
            except Exception:  # a bad folder or a database blip must not end the worker's rescans
                log.exception("could not rescan the models folders")

    def _requested_since(self, since: datetime | None) -> bool:
        with self.sessions() as session:
            asked = rescan_requested_at(session)
        return asked is not None and (since is None or asked > since)


def records_of(catalog: Catalog) -> list[CatalogRecord]:
    """The scanned entries as the database keeps them (with their paths, which stay here)."""
    records = []
    for entry in catalog.entries:
        c = entry.classification
        kind = entry.kind or c.kind
        details: dict[str, Any] = {
            key: value
            for key, value in (
                ("architecture", c.architecture),
                ("families", [f.value for f in c.families] if len(c.families) > 1 else None),
                ("vectors", c.vectors),
                ("prediction", c.prediction),
                ("latent_channels", c.latent_channels),
                ("layout", entry.layout.value),
            )
            if value is not None
        }
        records.append(
            CatalogRecord(
                kind=kind.value if kind is not None else "unknown",
                name=entry.name,
                family=entry.family.value if entry.family is not None else None,
                architecture=entry.base,
                format=entry.format or ("diffusers" if kind is Kind.DIFFUSERS else "unknown"),
                size_bytes=entry.size,
                fingerprint=entry.fingerprint,
                available=entry.available,
                reason=entry.reason,
                details=details,
                location=str(entry.path),
            )
        )
    return records


def scan_folders(roots: Sequence[Path], previous: Any) -> tuple[list[CatalogRecord], Any]:
    """The real scanner: headers of new or changed files only, read in this process (a
    worker holds a GPU and threads; no process pool is forked from it)."""
    catalog = scan(roots, previous if isinstance(previous, Catalog) else None, processes=1)
    return records_of(catalog), catalog


def catalog_sync(
    settings: Settings, base: Registry, worker_id: str, apply: Callable[[Registry], None]
) -> CatalogSync:
    """A worker's ``CatalogSync`` over ``EASEL_MODELS_DIR``, as ``easel worker`` wires it."""
    return CatalogSync(
        settings.models_roots,
        base,
        lambda: session_scope(settings.database_url),
        worker_id,
        apply,
        scanner=scan_folders,
        interval=settings.models_rescan_seconds,
        lost_after=settings.worker_lost_after_seconds,
    )
