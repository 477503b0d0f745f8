"""Thin Celery tasks: they take ids and call into ``worker.engine``."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.orm import sessionmaker

from easel.shared.db import engine_for
from easel.shared.models import Job, JobStatus
from easel.shared.queue import RUN_JOB_TASK, send_wakeup, send_webhook
from easel.shared.registry import load_registry
from easel.shared.retention import Policy, Pruner
from easel.shared.settings import get_settings, parse_shapes
from easel.shared.storage import storage_from_settings
from easel.worker import metrics as worker_metrics
from easel.worker.celery_app import app
from easel.worker.engine.device import detect
from easel.worker.engine.fastpath import warm_up
from easel.worker.engine.pipelines import PipelineCache, load_pipeline
from easel.worker.engine.runner import JobRunner
from easel.worker.heartbeat import Heartbeat
from easel.worker.sweeper import Sweeper

log = logging.getLogger(__name__)

# Set by `easel worker` before Celery forks its child: only GPU workers beat and claim.
GPU_ROLE = {"enabled": False}


def _notify(job: Job, status: JobStatus, timings: dict[str, Any]) -> None:
    """After the runner recorded a job's final status and timings: metrics, then its webhook."""
    worker_metrics.observe_job_finished(job.model, job.type, status.value, timings)
    if job.webhook_url:
        send_webhook(app, job.id)


def _model_loaded(model: str, seconds: float, loaded: int) -> None:
    worker_metrics.observe_model_load(model, seconds)
    worker_metrics.set_models_loaded(loaded)


@lru_cache(maxsize=1)
def get_runner() -> JobRunner:
    """This process's runner; its pipeline cache stays warm across tasks."""
    settings = get_settings()
    registry = load_registry(settings)
    plan = detect(settings.device)
    if not plan.is_cuda and settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    log.info("worker device %s (%s)", plan.device, plan.dtype)
    models = settings.served_models or registry.names()
    sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    return JobRunner(
        sessions=sessions,
        registry=registry,
        storage=storage_from_settings(settings),
        cache=PipelineCache(
            loader=lambda spec: load_pipeline(
                spec,
                plan,
                settings.offline,
                channels_last=settings.channels_last,
                torch_compile=settings.torch_compile,
            ),
            max_models=settings.max_loaded_models,
            max_bytes=settings.max_loaded_bytes,
            on_load=_model_loaded,
        ),
        worker_id=worker_id,
        models=models,
        progress_interval=settings.progress_interval_seconds,
        on_finished=_notify,
        heartbeat=Heartbeat(
            sessions,
            worker_id,
            models,
            plan.device,
            settings.heartbeat_seconds,
            sweeper=Sweeper(
                sessions=sessions,
                models=models,
                publish=lambda job_id, model: send_wakeup(app, job_id, model),
                notify=lambda job_id: send_webhook(app, job_id),
                max_attempts=settings.max_attempts,
                lost_after=settings.worker_lost_after_seconds,
                idle_republish_after=settings.idle_republish_seconds,
            ),
        ),
        db_retry_seconds=settings.db_retry_seconds,
        storage_attempts=settings.storage_retry_attempts,
        max_batch_images=settings.max_batch_size,
        batch_wait_seconds=settings.batch_wait_ms / 1000,
        overlap_store=True,
        on_batch=worker_metrics.observe_batch,
        vae_tiling_pixels=settings.vae_tiling_pixels,
    )


@lru_cache(maxsize=1)
def get_pruner() -> Pruner:
    """This process's retention pruner (``shared.retention``); idle unless retention is on."""
    settings = get_settings()
    runner = get_runner()
    return Pruner(
        runner.sessions,
        runner.storage,
        Policy.from_settings(settings),
        holder=runner.worker_id,
        interval=settings.retention_interval_seconds,
    )


@worker_process_init.connect
def _start_worker_process(**_: object) -> None:
    """In each worker child: serve metrics, start beating, then warm the models asked for."""
    if not GPU_ROLE["enabled"]:
        return
    settings = get_settings()
    if settings.metrics_port:
        try:
            worker_metrics.start_server(settings.metrics_port)
        except OSError:  # a taken port must not keep the worker from serving jobs
            log.exception("could not serve metrics on port %d", settings.metrics_port)
    runner = get_runner()
    if runner.heartbeat is not None:
        runner.heartbeat.start()
    get_pruner().start()  # the automatic retention prune, one worker per interval
    shapes = parse_shapes(settings.compile_shapes)
    for name in settings.preload_list(runner.registry.default):
        if name in runner.models:
            try:
                pipelines, _ = runner.cache.get(runner.registry.get(name))
                warm_up(pipelines.base, shapes)  # only with EASEL_TORCH_COMPILE on CUDA
            except Exception:  # a bad model must not keep the worker from serving the others
                log.exception("could not preload model %s", name)


@worker_process_shutdown.connect
def _stop_worker_process(**_: object) -> None:
    """Store what the last batch made, then stop beating."""
    if not get_runner.cache_info().currsize:
        return
    if get_pruner.cache_info().currsize:
        get_pruner().stop()
    runner = get_runner()
    try:
        runner.drain()
    finally:
        if runner.heartbeat is not None:
            runner.heartbeat.stop()


@app.task(name=RUN_JOB_TASK, acks_late=True)
def run_job(job_id: str) -> str | None:
    """Wake-up for ``job_id``: claim the best queued job for our models and run it.

    The id is a hint only; the claim decides, so duplicate or reordered wake-ups are
    harmless and priority holds whatever order messages arrive in.
    """
    return get_runner().run_next()
