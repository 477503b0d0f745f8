"""What request handlers use: settings, registry, storage, the broker and sessions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from flask import Flask, current_app
from sqlalchemy.orm import Session

from easel.shared.db import session_scope
from easel.shared.queue import WakeupCoalescer, broker_wakes_workers, make_celery, send_wakeup
from easel.shared.registry import Registry, load_registry
from easel.shared.settings import Settings
from easel.shared.storage import Storage, storage_from_settings


class Services:
    """The app's long-lived collaborators, built once per process."""

    def __init__(self, settings: Settings) -> None:
        settings.ensure_home()
        self.settings = settings
        self.registry: Registry = load_registry(settings)
        self.storage: Storage = storage_from_settings(settings)
        self.celery: Celery = make_celery(settings)
        # The embedded broker carries no wake-ups (``broker_wakes_workers``): nothing to coalesce.
        window = 0.05 if broker_wakes_workers(settings.broker_url) else 0.0
        self.wakeups = WakeupCoalescer(lambda job_id, model: send_wakeup(self.celery, job_id, model), window)

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
