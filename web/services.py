"""What request handlers use: settings, registry, storage, the broker and sessions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from flask import Flask, current_app
from sqlalchemy.orm import Session

from easel.shared.catalog_registry import with_catalog
from easel.shared.catalog_store import CatalogRecord, CatalogView
from easel.shared.db import session_scope
from easel.shared.queue import WakeupCoalescer, broker_wakes_workers, make_celery, send_wakeup
from easel.shared.registry import Registry, load_registry
from easel.shared.settings import Settings
from easel.shared.storage import Storage, storage_from_settings
from easel.web.held_calls import HeldCalls

log = logging.getLogger(__name__)


class Services:
    """The app's long-lived collaborators, built once per process."""

    def __init__(self, settings: Settings) -> None:
        settings.ensure_home()
        self.settings = settings
        self.base_registry: Registry = load_registry(settings)
        self._registry = self.base_registry
        self.catalog_skipped: list[str] = []
        # The workers' catalogs (EASEL_MODELS_DIR) join the registry as they are published.
        self.catalog = CatalogView(self.session, self._catalog_changed, settings.catalog_refresh_seconds)
        self.storage: Storage = storage_from_settings(settings)
        self.celery: Celery = make_celery(settings)
        # The embedded broker carries no wake-ups (``broker_wakes_workers``): nothing to coalesce.
        window = 0.05 if broker_wakes_workers(settings.broker_url) else 0.0
        self.wakeups = WakeupCoalescer(lambda job_id, model: send_wakeup(self.celery, job_id, model), window)
        self.held_calls = HeldCalls(
            self.session,
            settings.max_held_calls_per_key,
            settings.max_held_calls_per_process,
            settings.event_stream_heartbeat_seconds,
        )

    @property
    def registry(self) -> Registry:
        """The registry: the models file's (or built-in) models and adapters, and the files
        workers published (re-read when a worker published since, at most every
        ``EASEL_CATALOG_REFRESH_SECONDS``)."""
        self.catalog.refresh()
        return self._registry

    def _catalog_changed(self, records: list[CatalogRecord]) -> None:
        registry, self.catalog_skipped = with_catalog(self.base_registry, records)
        if registry.default != self._registry.default:
            how = (
                "EASEL_DEFAULT_MODEL" if registry.requested_default else "demo-shapes, else the first by name"
            )
            log.info("default model: %s (%s)", registry.default, how)
        self._registry = registry

    def init_app(self, app: Flask) -> None:
        app.extensions["easel"] = self

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.settings.database_url) as session:
            yield session


def services() -> Services:
    """The ``Services`` of the app handling the current request."""
    svc: Services = current_app.extensions["easel"]
    return svc
