"""``GET /metrics``: Prometheus series read from the database at scrape time.

Every web process answers the same figures (they are read from the database), so
gunicorn's several processes need no shared metrics state, and nothing here imports a
worker module. A scrape never reads the job history nor the queue's rows (docs/design.md principle 11):

1. one statement: the queued jobs by (type, model) as the queue's maintained state
   counts them (``shared.queue_turns``: a row per owner and priority, not per job), the
   running rows counted (a status-first index finds them; there are as many as the
   workers' batches hold), and the maintained ``job_counts`` of finished jobs
   (``shared.stats``). Finished counts give ``easel_jobs_finished``; all together give
   ``easel_jobs_submitted``; the active ones the queued / running gauges and the queue
   depth;
2. the maintained ``job_durations`` buckets: the queue-wait and run-time histograms of
   every job that finished after starting;
3. the live workers per model (``shared.workers``).

The counters never drop when retention deletes rows; they do when an operator
requeues a finished job (it is then active again and will be counted again when it
finishes), which Prometheus reads as a counter reset.
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
from sqlalchemy import BigInteger, cast, func, literal, select, union_all
from sqlalchemy.orm import Session

from easel.shared.models import Job, JobCount, JobDuration, JobStatus, JobType
from easel.shared.queue_turns import TURNS
from easel.shared.stats import ACTIVE, INF, RUN_BUCKETS, TERMINAL, WAIT_BUCKETS
from easel.shared.workers import live_workers_by_model
from easel.web.services import Services

bp = Blueprint("metrics", __name__)

QUEUE_WAIT_BUCKETS = WAIT_BUCKETS


def job_counts(session: Session) -> list[Any]:
    """(type, model, status, count): queued jobs as maintained, running rows counted now,
    finished ones maintained; one statement, so one snapshot (a job moving meanwhile is
    counted once)."""
    queued = select(
        TURNS.c.type,
        TURNS.c.model,
        literal(JobStatus.QUEUED.value).label("status"),
        cast(func.sum(TURNS.c.queued), BigInteger).label("n"),
    ).group_by(TURNS.c.type, TURNS.c.model)
    running = (
        select(Job.type, Job.model, Job.status, func.count().label("n"))
        .where(Job.status == JobStatus.RUNNING.value)
        .group_by(Job.type, Job.model, Job.status)
    )
    finished = select(JobCount.type, JobCount.model, JobCount.status, JobCount.count.label("n"))
    return list(session.execute(union_all(queued, running, finished)).all())


def histograms(session: Session) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, model) -> {"buckets": {label: count}, "count": n, "sum": seconds}."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, model, bucket, count, total in session.execute(
        select(JobDuration.kind, JobDuration.model, JobDuration.bucket, JobDuration.count, JobDuration.total)
    ):
        entry = found.setdefault((kind, model), {"buckets": {}, "count": 0, "sum": 0.0})
        entry["buckets"][bucket] = entry["buckets"].get(bucket, 0) + int(count)
        entry["count"] += int(count)
        entry["sum"] += float(total)
    return found


def cumulative(entry: dict[str, Any], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, ``+Inf`` last) from stored non-cumulative ones."""
    stored = [(float(label), n) for label, n in entry["buckets"].items() if label != INF]
    counts = [(str(bound), float(sum(n for upper, n in stored if upper <= bound))) for bound in bounds]
    return [*counts, ("+Inf", float(entry["count"]))]


class JobsCollector(Collector):
    """Collects the job, queue and worker series from the database on each scrape."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        with self.svc.session() as session:
            counts = job_counts(session)
            durations = histograms(session)
            models = sorted({*self.svc.registry.names(), *(model for _, model, _, _ in counts)})
            workers = live_workers_by_model(session, models, self.svc.settings.worker_lost_after_seconds)
        yield from self._job_families(counts, self.svc.registry.names(), models)
        yield from self._histograms(durations)
        live = GaugeMetricFamily("easel_workers", "Live workers serving the model.", labels=["model"])
        for model in models:
            live.add_metric([model], workers[model])
        yield live

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
        for finished_labels, n in sorted(finished.items()):
            family.add_metric(list(finished_labels), n)
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
    def _histograms(durations: dict[tuple[str, str], dict[str, Any]]) -> Iterator[Metric]:
        wait = HistogramMetricFamily(
            "easel_job_queue_wait_seconds",
            "Seconds finished jobs waited from submission to their (last) start.",
            labels=["model"],
        )
        run = HistogramMetricFamily(
            "easel_job_run_seconds", "Seconds finished jobs ran, start to finish.", labels=["model"]
        )
        for (kind, model), entry in sorted(durations.items()):
            family, bounds = (wait, QUEUE_WAIT_BUCKETS) if kind == "wait" else (run, RUN_BUCKETS)
            family.add_metric([model], cumulative(entry, bounds), entry["sum"])
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
