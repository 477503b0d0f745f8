"""Run one claimed job: load (warm), generate, store, record. Plain code, no Celery."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from shared.errors import ModelLoadError, StorageError, UnknownModel
from shared.models import Job, JobOutput, JobStatus, JobType, utcnow
from shared.pngmeta import encode_png
from shared.registry import Registry
from shared.storage import Storage
from worker.engine.claims import claim_next
from worker.engine.generate import GenerationRequest, GpuOutOfMemory, JobCanceled, generate
from worker.engine.pipelines import PipelineCache
from worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)


def output_key(job_id: str, index: int) -> str:
    """Where output ``index`` of a job is stored. Fixed per job, so a re-run overwrites."""
    return f"jobs/{job_id}/{index}.png"


def error_code_for(exc: BaseException) -> str:
    """A stable, documented code for a failure."""
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
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


class ProgressReporter:
    """The step callback: writes (step, total) at most every ``interval`` seconds, and in
    the same statement reads ``cancel_requested``, raising ``JobCanceled`` if set."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker_id: str, interval: float) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.interval = interval
        self._last = float("-inf")
        self.writes = 0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        try:
            with self.sessions() as session:
                cancel = session.execute(
                    update(Job)
                    .where(*self._mine())
                    .values(progress_step=step, progress_total=total)
                    .returning(Job.cancel_requested)
                ).scalar_one_or_none()
                session.commit()
        except SQLAlchemyError:  # a database blip must not fail the job: skip this write
            log.warning("progress of job %s not recorded (database unavailable)", self.job_id)
            return
        self.writes += 1
        if cancel is None or cancel:  # canceled, or no longer ours
            raise JobCanceled(self.job_id)

    def check_cancel(self) -> None:
        """Raise ``JobCanceled`` if a cancel was requested or the job is no longer ours."""
        try:
            with self.sessions() as session:
                cancel = session.scalar(select(Job.cancel_requested).where(*self._mine()))
        except SQLAlchemyError:
            return  # cannot tell now; the guarded finish decides
        if cancel is None or cancel:
            raise JobCanceled(self.job_id)

    def _mine(self) -> tuple[Any, ...]:
        return (Job.id == self.job_id, Job.status == JobStatus.RUNNING.value, Job.worker_id == self.worker_id)


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
    on_finished: Callable[[Job, JobStatus], None] | None = None
    heartbeat: Heartbeat | None = None
    db_retry_seconds: float = 300.0
    storage_attempts: int = 4

    def run_next(self) -> str | None:
        """Claim the best queued job and run it; its id, or ``None`` if none was queued."""
        with self.sessions() as session:
            job = claim_next(session, self.worker_id, self.models or None)
            if job is None:
                return None
            session.expunge(job)
        if self.heartbeat is not None:
            self.heartbeat.current_job_id = job.id
        try:
            self.run(job)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.current_job_id = None
        return job.id

    def run(self, job: Job) -> None:
        """Run a job this worker has claimed, and record how it ended."""
        started = time.perf_counter()
        timings: dict[str, Any] = {}
        if job.started_at is not None:
            timings["queue_seconds"] = round((job.started_at - job.created_at).total_seconds(), 3)
        # Every run is a batch (of one job, until jobs are batched together): its lines share an id.
        context = {"job_id": job.id, "model": job.model, "batch_id": uuid.uuid4().hex[:16]}
        log.info("running job %s", job.id, extra=context)
        try:
            spec = self.registry.get(job.model)
            pipelines, load_seconds = self.cache.get(spec)
            timings["load_seconds"] = round(load_seconds, 3)
            timings["model_cache_hit"] = load_seconds == 0.0
            pipe = pipelines.for_type(job.type)
            seeds = tuple(job.seed + i for i in range(job.num_images))
            request = self._request(job, seeds)
            reporter = ProgressReporter(self.sessions, job.id, self.worker_id, self.progress_interval)
            t0 = time.perf_counter()
            images = generate(pipe, request, reporter)
            timings["generate_seconds"] = round(time.perf_counter() - t0, 3)
            reporter.check_cancel()  # asked to cancel while decoding: store nothing
            t0 = time.perf_counter()
            outputs = self._store(job, images, seeds)
            timings["store_seconds"] = round(time.perf_counter() - t0, 3)
        except JobCanceled:
            timings["run_seconds"] = round(time.perf_counter() - started, 3)
            self._finish(job, JobStatus.CANCELED, timings)
            log.info("job %s canceled while running", job.id, extra=context)
            return
        except Exception as exc:
            timings["run_seconds"] = round(time.perf_counter() - started, 3)
            code = error_code_for(exc)
            log.exception("job %s failed: %s", job.id, code, extra=context)
            self._finish(job, JobStatus.FAILED, timings, error=(code, str(exc)[:2000]))
            return
        timings["run_seconds"] = round(time.perf_counter() - started, 3)
        if self._finish(job, JobStatus.SUCCEEDED, timings, outputs=outputs) is JobStatus.SUCCEEDED:
            log.info(
                "job %s succeeded in %.2fs",
                job.id,
                timings["run_seconds"],
                extra=context,
            )

    def _request(self, job: Job, seeds: tuple[int, ...]) -> GenerationRequest:
        """What the pipeline gets: the job's parameters and its stored inputs."""
        image = self._load_input(job.input_key, "RGB") if job.input_key else None
        mask = self._load_input(job.mask_key, "L") if job.mask_key else None
        return GenerationRequest(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance_scale=job.guidance_scale,
            scheduler=job.scheduler,
            seeds=seeds,
            job_type=JobType(job.type),
            image=image,
            mask=mask,
            strength=job.strength,
            mask_blur=job.mask_blur or 0,
            keep_unmasked=job.keep_unmasked is not False,
        )

    def _load_input(self, key: str, mode: str) -> Image.Image:
        with Image.open(io.BytesIO(self.storage.get(key))) as image:
            return image.convert(mode)

    def _store(self, job: Job, images: list[Any], seeds: Sequence[int]) -> list[JobOutput]:
        outputs = []
        base = {"job_id": job.id, "model": job.model, "type": job.type, **job.params()}
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
        """``_finish_once`` retried through database outages for ``db_retry_seconds``:
        finished work is never marked lost because the database blinked."""
        for attempt in Retrying(
            retry=retry_if_exception_type((OperationalError, InterfaceError, DisconnectionError)),
            stop=stop_after_delay(self.db_retry_seconds),
            wait=wait_exponential(multiplier=0.5, max=10),
            before_sleep=lambda state: log.warning(
                "recording job %s failed (attempt %d); retrying",
                job.id,
                state.attempt_number,
                extra={"job_id": job.id},
            ),
            reraise=True,
        ):
            with attempt:
                return self._finish_once(job, status, timings, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish_once(
        self,
        job: Job,
        status: JobStatus,
        timings: dict[str, Any],
        error: tuple[str, str] | None = None,
        outputs: list[JobOutput] | None = None,
    ) -> JobStatus | None:
        """Move our running job to ``status``; the status it got, or ``None`` if the job is
        no longer ours.

        A job whose cancel was requested after its last step ends ``canceled``, not
        ``succeeded``: the client asked, and nothing it did not want is published.
        """
        values: dict[str, Any] = {
            "status": status.value,
            "finished_at": utcnow(),
            "timings": timings,
            "updated_at": utcnow(),
        }
        if error is not None:
            values["error_code"], values["error_message"] = error
        with self.sessions() as session:
            mine = (Job.id == job.id, Job.status == JobStatus.RUNNING.value, Job.worker_id == self.worker_id)
            guard = (*mine, Job.cancel_requested.is_(False)) if status is JobStatus.SUCCEEDED else mine
            result = session.execute(
                update(Job).where(*guard).values(**values).execution_options(synchronize_session=False)
            )
            if result.rowcount != 1 and status is JobStatus.SUCCEEDED:
                status, outputs = JobStatus.CANCELED, None
                values["status"] = status.value
                result = session.execute(
                    update(Job).where(*mine).values(**values).execution_options(synchronize_session=False)
                )
            if result.rowcount != 1:
                session.rollback()
                log.warning(
                    "job %s is no longer ours; result of this run dropped", job.id, extra={"job_id": job.id}
                )
                return None
            if outputs:
                session.execute(delete(JobOutput).where(JobOutput.job_id == job.id))
                session.add_all(outputs)
            session.commit()
        if self.on_finished is not None:
            self.on_finished(job, status)
        return status
