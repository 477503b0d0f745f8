"""Series of ``/metrics`` that the alert rules (deploy/monitoring/easel-rules.yml) read,
besides the job series of ``web.metrics``, read at scrape time like them:

* ``easel_ready{dependency}``: what ``/readyz`` checks (the database, the broker, the
  storage), 1 when the dependency answers, 0 when it does not. A database that does not
  answer also fails the job series of the same scrape (they are read from it), so
  Prometheus then sees the web target down (``up == 0``); the workers'
  ``easel_worker_database_ready`` (their heartbeat) still tells the database apart;
* ``easel_workers_lost``: workers whose heartbeat stopped within the last hour without
  a clean stop (a crash, a killed pod, a lost host): older than
  ``EASEL_WORKER_LOST_AFTER_SECONDS`` and never marked stopped. One range read of the
  small ``workers`` table (a row per worker process);
* ``easel_held_calls{kind}``: held calls open now across web processes
  (``web.held_calls``), by kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from easel.shared.db import ping
from easel.shared.models import HeldCall, Worker, utcnow
from easel.shared.workers import live_since
from easel.web.held_calls import STALE_HEARTBEATS
from easel.web.services import Services

DEPENDENCIES = ("database", "broker", "storage")
LOST_WINDOW = timedelta(hours=1)
HELD_KINDS = ("wait", "openai", "a1111", "stream")  # every kind, 0 when none is held


def check_dependencies(svc: Services) -> dict[str, str]:
    """``{dependency: "ok" | "unavailable: <error type>"}`` for each of ``DEPENDENCIES``."""
    checks: dict[str, str] = {}
    try:
        ping(svc.settings.database_url)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        with svc.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    try:
        svc.storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable: {type(exc).__name__}"
    return checks


class OpsCollector(Collector):
    """``easel_ready``, ``easel_workers_lost`` and ``easel_held_calls`` on each scrape."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def describe(self) -> list[Metric]:
        return []  # registering must not reach the dependencies

    def collect(self) -> Iterator[Metric]:
        checks = check_dependencies(self.svc)
        ready = GaugeMetricFamily(
            "easel_ready",
            "Whether the dependency answers the web tier (1) or not (0).",
            labels=["dependency"],
        )
        for dependency, state in checks.items():
            ready.add_metric([dependency], 1.0 if state == "ok" else 0.0)
        yield ready
        if checks["database"] != "ok":
            return  # the job series fail this scrape anyway
        since = live_since(self.svc.settings.worker_lost_after_seconds)
        with self.svc.session() as session:
            lost = session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(
                    Worker.stopped_at.is_(None),
                    Worker.last_seen_at < since,
                    Worker.last_seen_at >= since - LOST_WINDOW,
                )
            )
        yield GaugeMetricFamily(
            "easel_workers_lost",
            "Workers whose heartbeat stopped in the last hour without a clean stop.",
            value=float(lost or 0),
        )
        yield self.held_calls()

    def held_calls(self) -> GaugeMetricFamily:
        """Live held calls by kind, across web processes (rows of ``held_calls`` whose
        process still refreshes them)."""
        stale = utcnow() - timedelta(
            seconds=self.svc.settings.event_stream_heartbeat_seconds * STALE_HEARTBEATS
        )
        with self.svc.session() as session:
            rows = session.execute(
                select(HeldCall.kind, func.count()).where(HeldCall.seen_at >= stale).group_by(HeldCall.kind)
            ).all()
        held = GaugeMetricFamily(
            "easel_held_calls",
            "Held calls open now (waits, OpenAI and AUTOMATIC1111 calls, event streams), by kind.",
            labels=["kind"],
        )
        counts = {str(kind): int(count) for kind, count in rows}
        for kind in HELD_KINDS:
            held.add_metric([kind], float(counts.get(kind, 0)))
        return held
