"""``GET /metrics``: Prometheus series derived from the database at scrape time.

Every web process answers the same figures (they are read from the job rows and
the workers' heartbeat rows), so gunicorn's several processes need no shared
metrics state, and nothing here imports a worker module. One scrape is three
queries:

1. job rows counted by (type, model, status): the submitted / finished counters,
   the queued / running gauges and the queue depth;
2. one aggregate over the finished jobs that started: per model, how many waited
   (``started_at - created_at``) and ran (``finished_at - started_at``) at most
   each bucket bound, and the sums. The histograms are exact over the whole table
   (so they only ever grow, like counters); the cost is one scan of the finished
   rows per scrape, fine for tables up to a few million rows at a 15-60 s scrape
   interval (the workers' own histograms are incremental, for larger tables);
3. the live workers per model (``shared.workers``).

Counters drop when rows are deleted or an operator requeues a finished job;
Prometheus reads a drop as a counter reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from easel.shared.models import TERMINAL_STATUSES, Job, JobStatus, JobType
from easel.shared.workers import live_workers_by_model
from easel.web.services import Services

bp = Blueprint("metrics", __name__)

QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RUN_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)


def _seconds(later: Any, earlier: Any, dialect: str) -> ColumnElement[float]:
    """``later - earlier`` in seconds (never negative: web and worker clocks may differ)."""
    if dialect == "postgresql":
        delta: ColumnElement[float] = func.date_part("epoch", later - earlier)
    elif dialect == "sqlite":
        delta = (func.julianday(later) - func.julianday(earlier)) * 86400.0
    else:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise NotImplementedError(f"no duration expression for the {dialect!r} database")
    return case((delta < 0, 0.0), else_=delta)


def _histogram_columns(name: str, delta: ColumnElement[float], bounds: Sequence[float]) -> list[Any]:
    """count, sum, then one cumulative count per bucket bound (NULL durations count nowhere)."""
    return [
        func.count(delta).label(f"{name}_count"),
        func.coalesce(func.sum(delta), 0.0).label(f"{name}_sum"),
        *(
            func.sum(case((delta <= bound, 1), else_=0)).label(f"{name}_le_{i}")
            for i, bound in enumerate(bounds)
        ),
    ]


def _buckets(row: Any, name: str, bounds: Sequence[float]) -> list[tuple[str, float]]:
    counts = [(str(bound), float(getattr(row, f"{name}_le_{i}") or 0)) for i, bound in enumerate(bounds)]
    return [*counts, ("+Inf", float(getattr(row, f"{name}_count")))]


class JobsCollector(Collector):
    """Collects the job, queue and worker series from the database on each scrape."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        with self.svc.session() as session:
            counts = session.execute(
                select(Job.type, Job.model, Job.status, func.count()).group_by(
                    Job.type, Job.model, Job.status
                )
            ).all()
            durations = self._durations(session)
            models = sorted({*self.svc.registry.names(), *(model for _, model, _, _ in counts)})
            workers = live_workers_by_model(session, models, self.svc.settings.worker_lost_after_seconds)
        yield from self._job_families(counts, self.svc.registry.names(), models)
        yield from self._histograms(durations)
        live = GaugeMetricFamily("easel_workers", "Live workers serving the model.", labels=["model"])
        for model in models:
            live.add_metric([model], workers[model])
        yield live

    def _durations(self, session: Session) -> list[Any]:
        dialect = session.get_bind().dialect.name
        wait = _seconds(Job.started_at, Job.created_at, dialect)
        run = _seconds(Job.finished_at, Job.started_at, dialect)
        return session.execute(
            select(
                Job.model,
                *_histogram_columns("wait", wait, QUEUE_WAIT_BUCKETS),
                *_histogram_columns("run", run, RUN_BUCKETS),
            )
            .where(Job.status.in_(TERMINAL), Job.started_at.is_not(None))
            .group_by(Job.model)
        ).all()

    @staticmethod
    def _job_families(counts: Iterable[Any], known: Iterable[str], models: Iterable[str]) -> Iterator[Metric]:
        submitted: dict[tuple[str, str], int] = defaultdict(int)
        finished: dict[tuple[str, str, str], int] = defaultdict(int)
        active: dict[tuple[str, str], int] = defaultdict(int)
        for model in known:  # counters of every configured model exist from the start
            for job_type in JobType:
                submitted[job_type.value, model] += 0
                for status in TERMINAL:
                    finished[status, job_type.value, model] += 0
        for model in models:  # gauges read 0, not absent, once a model's queue empties
            for status in ACTIVE:
                active[status, model] += 0
        for job_type, model, status, n in counts:
            submitted[job_type, model] += n
            if status in TERMINAL:
                finished[status, job_type, model] += n
            elif status in ACTIVE:
                active[status, model] += n

        family = CounterMetricFamily(
            "easel_jobs_submitted", "Jobs submitted (job rows).", labels=["type", "model"]
        )
        for labels, n in sorted(submitted.items()):
            family.add_metric(list(labels), n)
        yield family
        family = CounterMetricFamily(
            "easel_jobs_finished", "Jobs that reached a final status.", labels=["status", "type", "model"]
        )
        for labels, n in sorted(finished.items()):
            family.add_metric(list(labels), n)
        yield family
        jobs = GaugeMetricFamily("easel_jobs", "Jobs queued or running now.", labels=["status", "model"])
        depth = GaugeMetricFamily("easel_queue_depth", "Jobs waiting to be claimed.", labels=["model"])
        for (status, model), n in sorted(active.items()):
            jobs.add_metric([status, model], n)
            if status == JobStatus.QUEUED.value:
                depth.add_metric([model], n)
        yield jobs
        yield depth

    @staticmethod
    def _histograms(rows: Iterable[Any]) -> Iterator[Metric]:
        wait = HistogramMetricFamily(
            "easel_job_queue_wait_seconds",
            "Seconds finished jobs waited from submission to their (last) start.",
            labels=["model"],
        )
        run = HistogramMetricFamily(
            "easel_job_run_seconds", "Seconds finished jobs ran, start to finish.", labels=["model"]
        )
        for row in rows:
            wait.add_metric([row.model], _buckets(row, "wait", QUEUE_WAIT_BUCKETS), float(row.wait_sum))
            run.add_metric([row.model], _buckets(row, "run", RUN_BUCKETS), float(row.run_sum))
        yield wait
        yield run


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(state.app.extensions["easel"]))
    state.app.extensions["easel_metrics"] = registry


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus exposition (text, or OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(current_app.extensions["easel_metrics"]), content_type=content_type)
