"""Run claimed jobs, one batch per pipeline call: load (warm), generate, store, record.
Plain code, no Celery: the claim loop (``engine.loop``) calls ``run_next``."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from easel.shared import tracing
from easel.shared.errors import ERROR_DETAIL, ModelLoadError, StorageError, UnknownModel
from easel.shared.hires import LATENT
from easel.shared.jobs import stored_input_keys, webhook_events
from easel.shared.kinds import Engine, kind_of
from easel.shared.models import Job, JobOutput, JobStatus, JobType
from easel.shared.params import params_of
from easel.shared.registry import Registry
from easel.shared.storage import Storage
from easel.shared.transitions import Ending, finish_all, held_by, record_progress
from easel.worker.engine.adapters import load_embeddings, pipeline_for, prepare_control
from easel.worker.engine.claims import claim_batch
from easel.worker.engine.generate import (
    GenerationRequest,
    GpuOutOfMemory,
    HiresStage,
    JobCanceled,
    TimeLimitExceeded,
    Upscaler,
    generate_batch,
)
from easel.worker.engine.pipelines import PipelineCache
from easel.worker.engine.preview import PreviewWriter
from easel.worker.engine.upscale import load_upscaler, upscale_batch
from easel.worker.heartbeat import Heartbeat
from easel.worker.pngmeta import encode_png

log = logging.getLogger(__name__)


def trace_claim(jobs: Sequence[Job], started_ns: int, ended_ns: int, worker_id: str) -> None:
    """Each claimed job's ``easel.queue_wait`` (submit to claim) and ``easel.claim`` spans."""
    for job in jobs:
        waited_from = int(job.created_at.timestamp() * 1e9)
        tracing.record("easel.queue_wait", job.trace_parent, waited_from, ended_ns)
        attributes = {"easel.worker": worker_id, "easel.batch_jobs": len(jobs)}
        tracing.record("easel.claim", job.trace_parent, started_ns, ended_ns, attributes)


def trace_pipeline(jobs: Sequence[Job], seconds: float, calls: int) -> None:
    """One ``easel.pipeline`` span per job of a call that took ``seconds`` (just ended)."""
    ended = time.time_ns()
    for job in jobs:
        attributes = {"easel.batch_id": job.batch_id or "", "easel.batch_jobs": calls}
        tracing.record("easel.pipeline", job.trace_parent, ended - int(seconds * 1e9), ended, attributes)


def output_key(job_id: str, index: int) -> str:
    """Where output ``index`` of a job is stored. Fixed per job, so a re-run overwrites."""
    return f"jobs/{job_id}/{index}.png"


def error_code_for(exc: BaseException) -> str:
    """A stable, documented code for a failure."""
    if isinstance(exc, TimeLimitExceeded):
        return "time_limit"
    if isinstance(exc, UnknownModel):
        return "unknown_model"
    if isinstance(exc, ModelLoadError):
        return "model_load_error"
    if isinstance(exc, StorageError):
        return "storage_error"
    if isinstance(exc, GpuOutOfMemory):
        return "out_of_memory"
    return "generation_error"


GENERATION_FAILED = (
    "the image could not be generated: an internal error of the worker (the operator sees "
    "the detail on /admin); retry, or change the job's parameters"
)
STORAGE_FAILED = "the images could not be stored: the storage did not take them; retry later"


def public_error(exc: BaseException) -> tuple[str, str | None]:
    """What a failed job's owner is told, and the operator's detail (``None`` when the
    message is all there is). Easel's own errors (time limit, unknown model, out of
    memory) are written for tenants; a ``ModelLoadError`` names the model or adapter and
    what to do. Anything else (a library's exception, a storage error) may carry server
    paths or library internals: the owner gets a plain sentence, and the exception goes
    to the log and to ``/admin``."""
    if isinstance(exc, ModelLoadError):
        return exc.public, exc.detail
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, StorageError):
        return STORAGE_FAILED, detail
    if error_code_for(exc) == "generation_error":
        return GENERATION_FAILED, detail
    return str(exc), None


class ProgressReporter:
    """The step callback of one pipeline call, for every job in it.

    Writes (step, total) at most every ``interval`` seconds, the first one interval
    after the call started, and at the last step once it has written before (a call
    shorter than ``interval`` writes nothing: its jobs' ending records them), in one
    statement for all of the call's jobs, which also reads their ``cancel_requested``. A job that
    was canceled (or is no longer ours) leaves the batch: ``on_leave(job_id,
    canceled)`` is called and the others go on. When no job is left, ``JobCanceled``
    interrupts the pipeline at this step. Past ``deadline`` (``time.perf_counter()``),
    ``TimeLimitExceeded`` interrupts it.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_ids: str | Sequence[str],
        worker_id: str,
        interval: float,
        on_leave: Callable[[str, bool], None] | None = None,
        deadline: float | None = None,
        after_write: Callable[[list[str], int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.deadline = deadline
        self.active = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        self.worker_id = worker_id
        self.interval = interval
        self.on_leave = on_leave
        self.after_write = after_write
        self._last = clock()
        self.writes = 0

    def __call__(self, step: int, total: int) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise TimeLimitExceeded(f"the batch ran past its time limit at step {step} of {total}")
        now = self.clock()
        if now - self._last < self.interval and not (step >= total and self.writes):
            return
        self._last = now
        try:
            with self.sessions() as session:
                still_ours = record_progress(session, self.active, self.worker_id, step, total)
                session.commit()
        except SQLAlchemyError:  # a database blip must not fail the jobs: skip this write
            log.warning("progress of jobs %s not recorded (database unavailable)", ",".join(self.active))
            return
        self.writes += 1
        self._keep(still_ours)
        if self.after_write is not None:
            self.after_write(list(self.active), step, total)

    def _keep(self, cancel_by_id: dict[str, bool]) -> None:
        for job_id in list(self.active):
            if job_id not in cancel_by_id or cancel_by_id[job_id]:
                self.active.remove(job_id)
                if self.on_leave is not None:
                    self.on_leave(job_id, job_id in cancel_by_id)
        if not self.active:
            raise JobCanceled(",".join(cancel_by_id) or "batch")


@dataclass
class _Done:
    """A job whose images are made, waiting to be stored and recorded."""

    job: Job
    images: list[Any]
    seeds: tuple[int, ...]
    timings: dict[str, Any]
    context: dict[str, Any]


@dataclass
class JobRunner:
    """Claims and runs jobs for the models a worker serves."""

    sessions: sessionmaker[Session]
    registry: Registry
    storage: Storage
    cache: PipelineCache
    worker_id: str
    models: Sequence[str] = ()
    progress_interval: float = 0.5
    on_finished: Callable[[Job, JobStatus, dict[str, Any]], None] | None = None
    heartbeat: Heartbeat | None = None
    db_retry_seconds: float = 300.0
    storage_attempts: int = 4
    max_batch_images: int = 1
    max_loras_loaded: int = 8
    """LoRA adapters kept loaded per model (``engine.adapters``)."""
    time_limit: float = 0.0
    """Seconds a batch may denoise before its jobs fail with ``time_limit``; 0: no limit."""
    overlap_store: bool = False
    on_batch: Callable[[str, int, int], None] | None = None
    vae_tiling_pixels: int = 0
    preview_interval: float = 0.0
    """Least seconds between live previews of a batch (``engine.preview``); 0: none."""
    on_webhook: Callable[[str, str], None] | None = None
    """``(job id, event)``: queue a ``start`` or ``progress`` webhook of a job that asked for it."""
    webhook_progress_interval: float = 5.0
    _previews: PreviewWriter | None = field(default=None, init=False, repr=False)
    _store_pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _pending: Future[None] | None = field(default=None, init=False, repr=False)

    def run_next(self, wait_seconds: float = 0.0) -> str | None:
        """Claim the best queued job and its batch (waiting up to ``wait_seconds`` for
        compatible jobs to fill it), and run them; the head job's id, or ``None`` if
        nothing was queued."""
        claim_started = time.time_ns()
        with self.sessions() as session:
            jobs = claim_batch(
                session, self.worker_id, self.models or None, self.max_batch_images, wait_seconds
            )
            for job in jobs:
                session.expunge(job)
        if not jobs:
            return None
        trace_claim(jobs, claim_started, time.time_ns(), self.worker_id)
        if self.heartbeat is not None:
            self.heartbeat.current_job_id = jobs[0].id
        try:
            self.run_batch(jobs)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.current_job_id = None
        return jobs[0].id

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Run jobs this worker has claimed together (same batch key) in one pipeline call.

        Each job ends on its own: a canceled job leaves the batch, a job whose input
        cannot be read fails alone, and if the shared call fails, each job is run
        alone so that only a job that fails by itself is marked failed.
        """
        started = time.perf_counter()
        batch_id = jobs[0].batch_id or uuid.uuid4().hex[:16]
        contexts = {job.id: {"job_id": job.id, "model": job.model, "batch_id": batch_id} for job in jobs}
        shared: dict[str, Any] = {"batch_jobs": len(jobs), "batch_images": sum(j.num_images for j in jobs)}
        for job in jobs:
            log.info("running job %s", job.id, extra=contexts[job.id])
        self._webhooks(jobs, "start")
        diffusers = kind_of(jobs[0].type).engine is Engine.DIFFUSERS
        hires: HiresStage | None = None
        sd_upscale: Upscaler | None = None
        try:
            if diffusers:
                spec = self.registry.get(jobs[0].model)
                pipelines, load_seconds = self.cache.get(spec)
                shared["load_seconds"] = round(load_seconds, 3)
                shared["model_cache_hit"] = load_seconds == 0.0
                # The job type's pipeline, with the batch's ControlNet and LoRAs (same for all: batch key).
                params = params_of(jobs[0])
                pipe = pipeline_for(pipelines, params, self.registry, self.max_loras_loaded)
                if params.hires is not None:  # its second pass: img2img with the same adapters
                    second = params.model_copy(update={"type": JobType.IMG2IMG, "hires": None})
                    hires = HiresStage(
                        pipeline_for(pipelines, second, self.registry, self.max_loras_loaded),
                        None
                        if params.hires.upscaler == LATENT
                        else load_upscaler(params.hires.upscaler, self.registry),
                    )
                if params.sd_upscale is not None:  # the upscaler that enlarges the input first
                    sd_upscale = load_upscaler(params.sd_upscale.upscaler, self.registry)
            else:  # an upscaler (the batch key's), no model
                pipe = load_upscaler(jobs[0].upscaler or "", self.registry)
        except Exception as exc:
            for job in jobs:
                self._fail(job, exc, self._timings(job, started, shared), contexts[job.id])
            return
        requests: dict[str, GenerationRequest] = {}
        for job in jobs:
            try:  # the embeddings its prompts name (not in the batch key: per job), its inputs
                if diffusers:
                    load_embeddings(pipelines, (job.prompt, job.negative_prompt), self.registry)
                requests[job.id] = self._request(job)
            except Exception as exc:  # an unreadable input or embedding fails its own job only
                self._fail(job, exc, self._timings(job, started, shared), contexts[job.id])
        runnable = [j for j in jobs if j.id in requests]
        self._generate_and_store(runnable, requests, pipe, started, shared, contexts, hires, sd_upscale)

    def _generate_and_store(
        self,
        jobs: list[Job],
        requests: dict[str, GenerationRequest],
        pipe: Any,
        started: float,
        shared: dict[str, Any],
        contexts: dict[str, dict[str, Any]],
        hires: HiresStage | None = None,
        sd_upscale: Upscaler | None = None,
    ) -> bool:
        """Generate ``jobs`` in one call and hand their images to storing; ``False`` if the
        task's time limit struck (the jobs it stopped are then recorded failed). ``hires``:
        the second pass of a hires fix; ``sd_upscale``: an SD upscale's upscaler."""
        if not jobs:
            return True
        by_id = {job.id: job for job in jobs}

        def leave(job_id: str, canceled: bool) -> None:
            job = by_id[job_id]
            self._leave(job, canceled, self._timings(job, started, shared), contexts[job_id])

        reporter = ProgressReporter(
            self.sessions,
            [j.id for j in jobs],
            self.worker_id,
            self.progress_interval,
            leave,
            deadline=started + self.time_limit if self.time_limit else None,
            after_write=self._progress_webhooks(jobs),
        )
        diffusers = kind_of(jobs[0].type).engine is Engine.DIFFUSERS
        on_latents = self._preview_hook(pipe, jobs, requests, reporter.active) if diffusers else None
        if self.on_batch is not None:
            self.on_batch(jobs[0].model, sum(requests[j.id].params.num_images for j in jobs), len(jobs))
        t0 = time.perf_counter()
        try:
            batch = [requests[j.id] for j in jobs]
            if diffusers:
                results = generate_batch(
                    pipe,
                    batch,
                    reporter,
                    vae_tiling_pixels=self.vae_tiling_pixels,
                    on_latents=on_latents,
                    hires=hires,
                    sd_upscale=sd_upscale,
                )
            else:
                results = upscale_batch(pipe, batch, reporter)
        except JobCanceled:
            return True  # every job left the batch, each recorded as it left
        except Exception as exc:
            remaining = [by_id[job_id] for job_id in reporter.active]
            if len(remaining) > 1 and not isinstance(exc, TimeLimitExceeded):
                log.warning(
                    "batch of %d jobs failed (%s); running each alone",
                    len(remaining),
                    exc,
                    extra=contexts[remaining[0].id],
                )
                for index, job in enumerate(remaining):
                    alone = self._generate_and_store(
                        [job], requests, pipe, started, shared, contexts, hires, sd_upscale
                    )
                    if not alone:
                        for rest in remaining[index + 1 :]:  # no time left for these either
                            self._fail(
                                rest,
                                TimeLimitExceeded(str(exc)),
                                self._timings(rest, started, shared),
                                contexts[rest.id],
                            )
                        return False
                return True
            for job in remaining:
                self._fail(job, exc, self._timings(job, started, shared), contexts[job.id])
            return not isinstance(exc, TimeLimitExceeded)
        seconds = time.perf_counter() - t0
        trace_pipeline(jobs, seconds, len(batch))
        shared = {**shared, "generate_seconds": round(seconds, 3)}
        call_images = sum(requests[j.id].params.num_images for j in jobs) or 1
        done = [
            _Done(
                job,
                images,
                requests[job.id].params.seeds,
                {  # its share of the call, for usage per key (``shared.usage``)
                    **self._timings(job, started, shared),
                    "gpu_seconds": round(seconds * requests[job.id].params.num_images / call_images, 3),
                },
                contexts[job.id],
            )
            for job, images in zip(jobs, results, strict=True)
            if job.id in reporter.active
        ]
        self._submit_store(done)
        return True

    def _preview_hook(
        self, pipe: Any, jobs: list[Job], requests: dict[str, GenerationRequest], active: list[str]
    ) -> Any:
        """The latent callback that previews each job's first image, or ``None`` (off)."""
        if self.preview_interval <= 0:
            return None
        if self._previews is None:
            self._previews = PreviewWriter(self.sessions, self.storage, self.worker_id, self.preview_interval)
        first_images, index = {}, 0
        for job in jobs:
            first_images[index] = job.id
            index += requests[job.id].params.num_images
        return self._previews.for_batch(pipe, first_images, active, (jobs[0].width, jobs[0].height))

    def _webhooks(self, jobs: Sequence[Job], event: str) -> None:
        if self.on_webhook is None:
            return
        for job in jobs:
            if job.webhook_url and event in webhook_events(job):
                self.on_webhook(job.id, event)

    def _progress_webhooks(self, jobs: Sequence[Job]) -> Callable[[list[str], int, int], None] | None:
        """After a progress write: ``progress`` webhooks, at most every
        ``webhook_progress_interval`` seconds, for the jobs that asked for them."""
        wanting = {j.id: j for j in jobs if j.webhook_url and "progress" in webhook_events(j)}
        if self.on_webhook is None or not wanting:
            return None
        last = [time.monotonic()]  # the first after one interval: ``start`` has just gone

        def send(active: list[str], step: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] < self.webhook_progress_interval or step >= total:
                return  # the last step is followed by ``completed``
            last[0] = now
            self._webhooks([wanting[job_id] for job_id in active if job_id in wanting], "progress")

        return send

    def _submit_store(self, done: list[_Done]) -> None:
        """Store and record ``done``; with ``overlap_store``, in a background thread so the
        next batch can start denoising meanwhile (at most one batch waits to be stored)."""
        if not self.overlap_store:
            self._store_all(done)
            return
        self.drain()
        if self._store_pool is None:
            # Normal priority: a lowered one made denoising slower (the thread then holds the
            # GIL while it waits for a CPU), measured with bench.throughput.
            self._store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-store")
        self._pending = self._store_pool.submit(self._store_all, done)

    def drain(self) -> None:
        """Wait until the outputs handed to the background thread are stored and recorded."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _store_all(self, done: list[_Done]) -> None:
        """Store the images of each job still wanted (``_still_wanted``), then record the
        stored jobs in one transaction."""
        stored: list[tuple[_Done, Ending]] = []
        for item in self._still_wanted(done):
            job, timings = item.job, item.timings
            t0 = time.perf_counter()
            try:
                outputs = self._store(job, item.images, item.seeds)
            except Exception as exc:
                self._fail(job, exc, timings, item.context)
                continue
            timings["store_seconds"] = round(time.perf_counter() - t0, 3)
            stored_from = tracing.seconds_ago_ns(timings["store_seconds"])
            tracing.record("easel.store", job.trace_parent, stored_from, time.time_ns())
            timings["run_seconds"] = round(timings["run_seconds"] + timings["store_seconds"], 3)
            stored.append((item, Ending(job.id, JobStatus.SUCCEEDED, timings, outputs=outputs)))
        if not stored:
            return
        finals = self._finish_all([item.job for item, _ in stored], [ending for _, ending in stored])
        for (item, ending), final in zip(stored, finals, strict=True):
            if final is JobStatus.SUCCEEDED:
                seconds = ending.timings["run_seconds"]
                log.info("job %s succeeded in %.2fs", item.job.id, seconds, extra=item.context)

    def _still_wanted(self, done: list[_Done]) -> list[_Done]:
        """``done`` less the jobs whose cancel was asked after their last step (while
        decoding, or while an earlier batch was being stored), which end ``canceled``
        with nothing stored, and those no longer ours, dropped: one read for all. All of
        ``done`` when the database cannot tell now (the guarded finish decides)."""
        try:
            with self.sessions() as session:
                ids = [item.job.id for item in done]
                rows = session.execute(
                    select(Job.id, Job.cancel_requested).where(*held_by(self.worker_id, *ids))
                ).all()
        except SQLAlchemyError:
            return done
        cancel_by_id = {job_id: bool(cancel) for job_id, cancel in rows}
        wanted = []
        for item in done:
            if cancel_by_id.get(item.job.id) is False:
                wanted.append(item)
            else:
                self._leave(item.job, item.job.id in cancel_by_id, item.timings, item.context)
        return wanted

    def _leave(self, job: Job, canceled: bool, timings: dict[str, Any], context: dict[str, Any]) -> None:
        """A job that left its run before storing: ended ``canceled`` if its cancel was
        asked, else (no longer ours) its result dropped."""
        if canceled:
            self._finish(job, JobStatus.CANCELED, timings)
            log.info("job %s canceled while running", job.id, extra=context)
        else:
            log.warning("job %s is no longer ours; result of this run dropped", job.id, extra=context)

    def _fail(self, job: Job, exc: BaseException, timings: dict[str, Any], context: dict[str, Any]) -> None:
        code = error_code_for(exc)
        message, detail = public_error(exc)
        log.error("job %s failed: %s", job.id, code, exc_info=exc, extra=context)  # the whole detail
        if detail is not None:  # for /admin; never in the job object a tenant sees
            timings = {**timings, ERROR_DETAIL: detail[:2000]}
        self._finish(job, JobStatus.FAILED, timings, error=(code, message[:2000]))

    @staticmethod
    def _timings(job: Job, started: float, shared: dict[str, Any]) -> dict[str, Any]:
        timings = {**shared, "run_seconds": round(time.perf_counter() - started, 3)}
        if job.started_at is not None:
            timings["queue_seconds"] = round((job.started_at - job.created_at).total_seconds(), 3)
        return timings

    def _request(self, job: Job) -> GenerationRequest:
        """What the pipeline gets: the job's parameters and its stored inputs
        (``shared.kinds.INPUTS``), the ControlNet's image as its control map."""
        params = params_of(job)
        inputs = {item.name: self._load_input(key, item.mode) for item, key in stored_input_keys(job)}
        control = inputs.pop("control", None)
        if params.control is not None and control is not None:
            spec = self.registry.controlnets.get(params.control.model)
            control = prepare_control(control, spec.preprocessor if spec is not None else "none")
        return GenerationRequest(params, control=control if params.control else None, **inputs)

    def _load_input(self, key: str, mode: str) -> Image.Image:
        with Image.open(io.BytesIO(self.storage.get(key))) as image:
            return image.convert(mode)

    def _store(self, job: Job, images: list[Any], seeds: Sequence[int]) -> list[JobOutput]:
        outputs = []
        base = {"job_id": job.id, "model": job.model, "type": job.type, **params_of(job).recorded()}
        for index, (image, seed) in enumerate(zip(images, seeds, strict=True)):
            data = encode_png(image, {**base, "seed": seed, "index": index})
            key = output_key(job.id, index)
            self._put_with_retries(key, data)
            outputs.append(
                JobOutput(
                    job_id=job.id,
                    index=index,
                    seed=seed,
                    storage_key=key,
                    width=image.width,
                    height=image.height,
                    content_type="image/png",
                    size_bytes=len(data),
                )
            )
        return outputs

    def _put_with_retries(self, key: str, data: bytes) -> None:
        """Upload with exponential backoff; the last ``StorageError`` fails the job."""
        for attempt in Retrying(
            retry=retry_if_exception_type(StorageError),
            stop=stop_after_attempt(self.storage_attempts),
            wait=wait_exponential(multiplier=0.5, max=8),
            before_sleep=lambda state: log.warning(
                "upload of %s failed (attempt %d); retrying", key, state.attempt_number
            ),
            reraise=True,
        ):
            with attempt:
                self.storage.put(key, data, "image/png")

    def _finish(
        self, job: Job, status: JobStatus, timings: dict[str, Any], **kwargs: Any
    ) -> JobStatus | None:
        """End one job (``_finish_all``)."""
        return self._finish_all([job], [Ending(job.id, status, timings, **kwargs)])[0]

    def _finish_all(self, jobs: Sequence[Job], endings: Sequence[Ending]) -> list[JobStatus | None]:
        """``_finish_all_once`` retried through database outages for ``db_retry_seconds``:
        finished work is never marked lost because the database blinked."""
        for attempt in Retrying(
            retry=retry_if_exception_type((OperationalError, InterfaceError, DisconnectionError)),
            stop=stop_after_delay(self.db_retry_seconds),
            wait=wait_exponential(multiplier=0.5, max=10),
            before_sleep=lambda state: log.warning(
                "recording jobs %s failed (attempt %d); retrying",
                ",".join(job.id for job in jobs),
                state.attempt_number,
                extra={"job_id": jobs[0].id},
            ),
            reraise=True,
        ):
            with attempt:
                return self._finish_all_once(jobs, endings)
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish_all_once(self, jobs: Sequence[Job], endings: Sequence[Ending]) -> list[JobStatus | None]:
        """Move our running jobs to their endings in one transaction; for each, the status
        it got (``canceled`` if a cancel was asked meanwhile), or ``None`` if the job is
        no longer ours."""
        with self.sessions() as session:
            finals = finish_all(session, self.worker_id, endings)
        for job, ending, final in zip(jobs, endings, finals, strict=True):
            if final is None:
                log.warning(
                    "job %s is no longer ours; result of this run dropped", job.id, extra={"job_id": job.id}
                )
            elif self.on_finished is not None:
                if ending.error is not None:  # as recorded on the row (the failure code metric)
                    job.error_code, job.error_message = ending.error
                self.on_finished(job, final, ending.timings)
        return finals
