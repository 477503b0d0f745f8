"""A worker process's own Prometheus series, served on ``EASEL_METRICS_PORT``.

The series live on a dedicated registry (``REGISTRY``), process-global like the
pipeline cache: each Celery child (one per GPU) counts what it did and serves it
from a small HTTP thread. The web tier's ``/metrics`` holds the cluster-wide view
derived from the database; these add what only the worker sees (batches, model
loads, failures by code, its heartbeat's reach of the database, its GPUs through
``worker.gpu_metrics``) and per-worker timings. The webhook sender (``easel webhooks``)
serves the same registry with its delivery outcomes. Observing never raises into the
caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# The same bounds as the web tier's histograms (web/metrics.py), so the two compare.
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
RUN_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
LOAD_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

disable_created_metrics()  # no ``*_created`` series: they double the output and no dashboard uses them
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

JOBS_FINISHED = Counter(
    "easel_worker_jobs_finished",
    "Jobs this worker finished, by final status.",
    ["status", "type", "model"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "easel_worker_queue_wait_seconds",
    "Seconds the jobs this worker finished waited from submission to their start.",
    ["model"],
    buckets=QUEUE_WAIT_BUCKETS,
    registry=REGISTRY,
)
RUN = Histogram(
    "easel_worker_run_seconds",
    "Seconds the jobs this worker finished ran, claim to finish.",
    ["model"],
    buckets=RUN_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "easel_worker_batch_size",
    "Images generated per pipeline call.",
    ["model"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_JOBS = Histogram(
    "easel_worker_batch_jobs",
    "Jobs run together per pipeline call.",
    ["model"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
MODEL_LOADS = Counter(
    "easel_worker_model_loads", "Models loaded into the pipeline cache.", ["model"], registry=REGISTRY
)
MODEL_LOAD_SECONDS = Histogram(
    "easel_worker_model_load_seconds",
    "Seconds a model took to load.",
    ["model"],
    buckets=LOAD_BUCKETS,
    registry=REGISTRY,
)
MODELS_LOADED = Gauge("easel_worker_models_loaded", "Models loaded (warm) now.", registry=REGISTRY)


class _DatabaseReady(Collector):
    """``easel_worker_database_ready``: absent until the first heartbeat, so the webhook
    sender (same registry, no heartbeat) and a worker still starting do not read 0."""

    def __init__(self) -> None:
        self.ready: bool | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.ready is not None:
            yield GaugeMetricFamily(
                "easel_worker_database_ready",
                "Whether this worker's last heartbeat reached the database (1) or not (0).",
                value=1.0 if self.ready else 0.0,
            )


DATABASE_READY = _DatabaseReady()
REGISTRY.register(DATABASE_READY)
JOBS_FAILED = Counter(
    "easel_worker_jobs_failed",
    "Jobs this worker finished as failed, by the job's error code.",
    ["model", "code"],
    registry=REGISTRY,
)
# Served by `easel webhooks` (the sender) when it has EASEL_METRICS_PORT.
WEBHOOK_DELIVERIES = Counter(
    "easel_webhook_deliveries",
    "Webhook delivery attempts by event and outcome: delivered, failed (to be retried), "
    "abandoned (failed for the last time), skipped (nothing to deliver, or a start or "
    "progress event that failed and is not retried), deferred (the owner had its share of "
    "this sender's slots: sent again shortly, not an attempt).",
    ["event", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_EVENTS = ("completed", "start", "progress")
WEBHOOK_OUTCOMES = ("delivered", "failed", "abandoned", "skipped", "deferred")

_server_lock = threading.Lock()
_server_port: int | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))


def observe_job_finished(
    model: str, job_type: str, status: str, timings: Mapping[str, Any], code: str | None = None
) -> None:
    """Count a finished job; ``timings`` may hold ``queue_seconds`` and ``run_seconds``;
    ``code``: a failed job's error code."""
    try:
        JOBS_FINISHED.labels(status=status, type=job_type, model=model).inc()
        if status == "failed":
            JOBS_FAILED.labels(model=model, code=code or "unknown").inc()
        queue_seconds = _number(timings.get("queue_seconds"))
        if queue_seconds is not None:
            QUEUE_WAIT.labels(model=model).observe(queue_seconds)
        run_seconds = _number(timings.get("run_seconds"))
        if run_seconds is not None:
            RUN.labels(model=model).observe(run_seconds)
    except Exception:  # metrics must never fail a job
        log.warning("could not record metrics of a finished job", exc_info=True)


def observe_batch(model: str, images: int, jobs: int) -> None:
    """One pipeline call of ``jobs`` jobs generating ``images`` images in all."""
    BATCH_SIZE.labels(model=model).observe(images)
    BATCH_JOBS.labels(model=model).observe(jobs)


def observe_model_load(model: str, seconds: float) -> None:
    """A model loaded into the cache (a miss) in ``seconds``."""
    MODEL_LOADS.labels(model=model).inc()
    MODEL_LOAD_SECONDS.labels(model=model).observe(max(0.0, seconds))


def set_models_loaded(count: int) -> None:
    """How many models the cache holds now (after a load or an eviction)."""
    MODELS_LOADED.set(count)


def set_database_ready(ready: bool) -> None:
    """The outcome of the heartbeat's last write."""
    DATABASE_READY.ready = ready


def init_webhook_series() -> None:
    """Every (event, outcome) at 0, so rates and alerts see the sender before its first
    delivery; called by the webhook sender only (GPU workers deliver none)."""
    for event in WEBHOOK_EVENTS:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_DELIVERIES.labels(event=event, outcome=outcome)


def observe_webhook(event: str, outcome: str) -> None:
    """One delivery attempt of ``event`` ended in ``outcome`` (``WEBHOOK_OUTCOMES``)."""
    try:
        WEBHOOK_DELIVERIES.labels(event=event, outcome=outcome).inc()
    except Exception:  # metrics must never fail a delivery
        log.warning("could not record a webhook delivery", exc_info=True)


_gpu_watched = False


def watch_gpus(device: str) -> bool:
    """Add the GPU series of a worker on ``device`` (``worker.gpu_metrics``) to
    ``REGISTRY``, once; off CUDA nothing is added (the series are absent). Whether the
    series are collected."""
    global _gpu_watched
    from easel.worker.gpu_metrics import gpu_collector

    with _server_lock:
        if _gpu_watched:
            return True
        try:
            collector = gpu_collector(device)
        except Exception:  # torch missing or broken: the worker reports without GPU series
            log.warning("no GPU metrics", exc_info=True)
            return False
        if collector is None:
            return False
        REGISTRY.register(collector)
        _gpu_watched = True
    return True


def start_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``REGISTRY`` on ``addr:port`` from a daemon thread; a second call is a no-op.

    Raises ``OSError`` when the port is taken.
    """
    global _server_port
    with _server_lock:
        if _server_port is not None:
            if _server_port != port:
                log.warning("metrics already served on port %d, not %d", _server_port, port)
            return
        start_http_server(port, addr=addr, registry=REGISTRY)
        _server_port = port
    log.info("serving metrics on %s:%d/metrics", addr, port)
