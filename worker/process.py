"""One GPU worker process, wired explicitly from its settings and the models it serves.

``WorkerProcess.build`` makes the parts (pipeline cache, runner, heartbeat with its
sweeps, claim loop, retention pruner); ``start`` serves metrics, beats, starts the
pruner and the claim loop, which
first loads the models to preload; ``stop`` claims nothing more, lets the batch in
hand finish and be stored, and marks the worker stopped. The Celery consumer in front
(``worker.tasks.make_gpu_app``) only calls ``wake``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import sessionmaker

from easel.shared.db import engine_for
from easel.shared.jobs import webhook_events
from easel.shared.models import Job, JobStatus
from easel.shared.queue import broker_wakes_workers
from easel.shared.registry import Registry
from easel.shared.retention import Policy, Pruner
from easel.shared.settings import Settings, parse_shapes
from easel.shared.storage import storage_from_settings
from easel.worker import metrics as worker_metrics
from easel.worker.compile_metrics import compile_states, observe_compile
from easel.worker.engine.compile_switch import Compiler, compiler_from_settings
from easel.worker.engine.device import DevicePlan, overlaps_store
from easel.worker.engine.fastpath import warm_up, warm_up_shapes
from easel.worker.engine.loop import ClaimLoop
from easel.worker.engine.pipelines import PipelineCache, load_pipeline
from easel.worker.engine.runner import JobRunner
from easel.worker.heartbeat import Heartbeat
from easel.worker.sweeper import Sweeper

log = logging.getLogger(__name__)

Publish = Any  # (job id, model) -> object: a wake-up for another worker
Notify = Any  # (job id[, event]) -> object: a job's webhook (default event: completed)


GIL_SWITCH_INTERVAL = 50e-6
"""Seconds a thread of the worker may keep the GIL while another waits for it
(``sys.setswitchinterval``; CPython's default is 5 ms). The denoising thread lets go of
the GIL at each torch operation and needs it back right after; at the default, a busy
store, preview or broker thread then keeps it for up to 5 ms every time, so denoising
crawls for as long as they work. 50 us gives it back at once (docs/benchmarks.md)."""


def new_worker_id() -> str:
    """``host:pid:token``: unique even when a restarted container reuses host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def store_overlap(settings: Settings, plan: DevicePlan) -> bool:
    """``overlaps_store`` for this process: its torch threads and the CPUs it may run on."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    overlap = overlaps_store(settings.store_overlap, plan, torch.get_num_threads(), cpus)
    log.info(
        "each batch is stored %s",
        "beside the next one's denoising" if overlap else "before the next one starts",
    )
    return overlap


def idle_poll_seconds(settings: Settings) -> float:
    """How often an idle worker looks for queued jobs: the setting, else 1 s with a broker
    whose wake-ups arrive at once and 0.1 s with the embedded one, which carries none
    (``broker_wakes_workers``)."""
    if settings.idle_poll_seconds:
        return settings.idle_poll_seconds
    return 1.0 if broker_wakes_workers(settings.broker_url) else 0.1


@dataclass
class WorkerProcess:
    """The parts of one worker process and their life cycle."""

    settings: Settings
    registry: Registry
    models: list[str]
    runner: JobRunner
    heartbeat: Heartbeat
    loop: ClaimLoop
    pruner: Pruner

    @classmethod
    def build(
        cls,
        settings: Settings,
        registry: Registry,
        models: list[str],
        plan: DevicePlan,
        publish: Publish,
        notify: Notify,
    ) -> WorkerProcess:
        """Wire a worker serving ``models`` on ``plan``'s device; ``publish(job_id, model)``
        sends a wake-up and ``notify(job_id)`` queues a finished job's webhook."""
        sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
        worker_id = new_worker_id()

        def finished(job: Job, status: JobStatus, timings: dict[str, Any]) -> None:
            worker_metrics.observe_job_finished(job.model, job.type, status.value, timings, job.error_code)
            if job.webhook_url and "completed" in webhook_events(job):
                notify(job.id)

        def loaded(model: str, seconds: float, count: int) -> None:
            worker_metrics.observe_model_load(model, seconds)
            worker_metrics.set_models_loaded(count)

        heartbeat = Heartbeat(
            sessions,
            worker_id,
            models,
            plan.device,
            settings.heartbeat_seconds,
            sweeper=Sweeper(
                sessions=sessions,
                models=models,
                publish=publish,
                notify=notify,
                max_attempts=settings.max_attempts,
                lost_after=settings.worker_lost_after_seconds,
            ),
            hard_time_limit=settings.task_time_limit,
            compile_states=compile_states,
        )
        storage = storage_from_settings(settings)
        compiler = compiler_from_settings(settings, plan, storage)
        if compiler is not None:
            compiler.on_state = observe_compile

        def load(spec: Any) -> Any:
            pipe = load_pipeline(spec, plan, settings.offline, channels_last=settings.channels_last)
            return compiler.attach(spec, pipe) if compiler is not None else pipe

        runner = JobRunner(
            sessions=sessions,
            registry=registry,
            storage=storage,
            cache=PipelineCache(
                loader=load,
                max_models=settings.max_loaded_models,
                max_bytes=settings.max_loaded_bytes,
                on_load=loaded,
            ),
            worker_id=worker_id,
            models=models,
            progress_interval=settings.progress_interval_seconds,
            on_finished=finished,
            heartbeat=heartbeat,
            db_retry_seconds=settings.db_retry_seconds,
            storage_attempts=settings.storage_retry_attempts,
            max_batch_images=settings.max_batch_size,
            max_loras_loaded=settings.max_loras_loaded,
            time_limit=settings.task_soft_time_limit,
            overlap_store=store_overlap(settings, plan),
            on_batch=worker_metrics.observe_batch,
            vae_tiling_pixels=settings.vae_tiling_pixels,
            preview_interval=settings.preview_interval_seconds,
            on_webhook=notify,
            webhook_progress_interval=settings.webhook_progress_seconds,
        )
        loop = ClaimLoop(
            runner.run_next,
            idle_poll=idle_poll_seconds(settings),
            gather=settings.batch_wait_ms / 1000,
            before_first_claim=lambda: preload(settings, registry, models, runner.cache, plan, compiler),
        )
        pruner = Pruner(
            sessions,
            runner.storage,
            Policy.from_settings(settings),
            holder=worker_id,
            interval=settings.retention_interval_seconds,
        )
        return cls(settings, registry, models, runner, heartbeat, loop, pruner)

    def serve(self, registry: Registry) -> list[str]:
        """Serve ``registry`` from the next claim on (a rescan of the models folders found
        files added or removed): the models ``EASEL_WORKER_MODELS`` names, else all of
        them. The names it serves that it did not before."""
        models = served_models(self.settings, registry) or [NO_MODELS]
        added = [name for name in models if name not in self.models]
        changed = models != self.models
        self.registry = self.runner.registry = registry
        self.models = models
        self.runner.models = list(models)
        self.heartbeat.models = list(models)
        if self.heartbeat.sweeper is not None:
            self.heartbeat.sweeper.models = list(models)
        if changed:
            log.info("worker %s now serves %s", self.heartbeat.worker_id, ", ".join(models))
        return added

    def start(self) -> None:
        """Serve metrics, start beating (after marking dead predecessors on this host
        stopped), and start claiming."""
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)  # the denoising thread first: see above
        if self.settings.metrics_port:
            try:
                worker_metrics.start_server(self.settings.metrics_port)
            except OSError:  # a taken port must not keep the worker from serving jobs
                log.exception("could not serve metrics on port %d", self.settings.metrics_port)
            worker_metrics.watch_gpus(self.heartbeat.device)
        self.heartbeat.start()
        self.pruner.start()  # the automatic retention prune: one worker per interval
        self.loop.start()
        log.info("worker %s serving %s", self.heartbeat.worker_id, ", ".join(self.models))

    def wake(self) -> None:
        """A wake-up arrived: claim now if idle."""
        self.loop.wake()

    def stop(self, timeout: float | None = None) -> None:
        """Claim nothing more, finish and store the batch in hand (up to ``timeout``), then
        mark this worker stopped so its unfinished jobs are requeued at once."""
        if not self.loop.stop(timeout):
            log.warning("the batch in hand did not finish in %ss; its jobs will be requeued", timeout)
        self.pruner.stop()
        try:
            self.runner.drain()
        finally:
            self.heartbeat.stop()


NO_MODELS = ":none:"
"""The model list of a worker whose models folders hold no model yet: a name no model can
have, so it claims nothing (an empty list would mean every model)."""


def served_models(settings: Settings, registry: Registry) -> list[str]:
    """The models a worker serves: those ``EASEL_WORKER_MODELS`` names that the registry
    has, else every model of the registry."""
    if settings.served_models:
        return [name for name in settings.served_models if name in registry]
    return registry.names()


def preload(
    settings: Settings,
    registry: Registry,
    models: list[str],
    cache: PipelineCache,
    plan: DevicePlan,
    compiler: Compiler | None = None,
) -> None:
    """Load the models to preload and, on CUDA, warm each up (``warm_up_shapes``: the
    sizes to compile, else its default size) at every batch size the worker runs
    (``warm_up_batch_sizes``), so no job pays a compile or a batch size's first-call set-up.
    With a ``compiler``, its load already compiles and warms up (or does so in the background)."""
    compile_shapes = parse_shapes(settings.compile_shapes)
    for name in settings.preload_list(registry.default):
        if name not in models:
            continue
        try:
            spec = registry.get(name)
            pipelines, _ = cache.get(spec)
        except Exception:  # a bad model must not keep the worker from serving the others
            log.exception("could not preload model %s", name)
            continue
        state = compiler.states.get(name) if compiler is not None else None
        if state is not None and state.path != "eager":  # the compile warmed it up, or will
            continue
        try:
            warm_up(
                pipelines.base,
                warm_up_shapes(plan, compile_shapes, spec.default_size),
                warm_up_batch_sizes(settings.max_batch_size),
                vae_tiling_pixels=settings.vae_tiling_pixels,
            )
        except Exception:  # the model is loaded: its first jobs pay what the warm-up would have
            log.exception("could not warm up model %s; it serves jobs without the warm-up", name)


def warm_up_batch_sizes(max_batch_size: int) -> list[int]:
    """Every batch size a worker runs: 1 to ``EASEL_MAX_BATCH_SIZE`` images. The sizes from
    2 up share one compiled graph (``compile_unet``), so the extra calls compile nothing;
    they pay each size's first-call set-up, which a job would otherwise pay."""
    return list(range(1, max_batch_size + 1))
