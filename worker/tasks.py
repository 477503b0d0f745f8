"""Thin Celery tasks: they take ids and call into ``worker.engine``."""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache

from shared.db import engine_for
from shared.queue import RUN_JOB_TASK
from shared.registry import load_registry
from shared.settings import get_settings
from shared.storage import storage_from_settings
from worker.celery_app import app
from worker.engine.device import detect
from worker.engine.pipelines import PipelineCache, load_pipeline
from worker.engine.runner import JobRunner

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def get_runner() -> JobRunner:
    """This process's runner; its pipeline cache stays warm across tasks."""
    from sqlalchemy.orm import sessionmaker

    settings = get_settings()
    registry = load_registry(settings)
    plan = detect(settings.device)
    log.info("worker device %s (%s)", plan.device, plan.dtype)
    cache = PipelineCache(loader=lambda spec: load_pipeline(spec, plan, settings.offline))
    models = settings.served_models or registry.names()
    return JobRunner(
        sessions=sessionmaker(engine_for(settings.database_url), expire_on_commit=False),
        registry=registry,
        storage=storage_from_settings(settings),
        cache=cache,
        worker_id=f"{socket.gethostname()}:{os.getpid()}",
        models=models,
        progress_interval=settings.progress_interval_seconds,
    )


@app.task(name=RUN_JOB_TASK, acks_late=True)
def run_job(job_id: str) -> str | None:
    """Wake-up for ``job_id``: claim the best queued job for our models and run it.

    The id is a hint only; the claim decides, so duplicate or reordered wake-ups are
    harmless and priority holds whatever order messages arrive in.
    """
    return get_runner().run_next()
