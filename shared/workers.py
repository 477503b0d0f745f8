"""Live workers, read from their heartbeat rows (``workers`` table).

A worker is live when its row is not marked stopped and its last heartbeat is
younger than ``EASEL_WORKER_LOST_AFTER_SECONDS``. Workers write these rows
(``worker.heartbeat``); the web tier reads them here, without importing any worker
module (and so without torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from easel.shared.models import Worker, utcnow


def live_since(lost_after: float) -> datetime:
    """The oldest heartbeat that still counts as live."""
    return utcnow() - timedelta(seconds=lost_after)


def serves(models: Sequence[str] | None, model: str) -> bool:
    """Whether a worker that recorded ``models`` serves ``model`` (an empty list: every model)."""
    return not models or model in models


_LIVE_MODELS = select(Worker.models).where(
    Worker.last_seen_at >= bindparam("since"), Worker.stopped_at.is_(None)
)
"""Built once: every submit and job view reads it."""


def live_worker_models(session: Session, lost_after: float) -> list[list[str]]:
    """The models of each live worker, one list per worker."""
    rows = session.scalars(_LIVE_MODELS, {"since": live_since(lost_after)}).all()
    return [list(models or []) for models in rows]


def live_workers(session: Session, model: str, lost_after: float) -> int:
    """How many live workers serve ``model``."""
    return sum(1 for models in live_worker_models(session, lost_after) if serves(models, model))


def live_workers_by_model(session: Session, names: Iterable[str], lost_after: float) -> dict[str, int]:
    """For each of ``names``, how many live workers serve it (one query for all)."""
    workers = live_worker_models(session, lost_after)
    return {name: sum(1 for models in workers if serves(models, name)) for name in names}
