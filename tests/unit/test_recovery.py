"""Recovery logic without processes: sweeps, storage retries, GPU out-of-memory splits."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine
from easel.shared.errors import StorageError
from easel.shared.models import Job, utcnow
from easel.shared.storage import LocalStorage
from easel.worker.engine.generate import GenerationRequest, GpuOutOfMemory
from easel.worker.sweeper import Sweeper
from tests.factories import (
    enqueue,
    fetch,
    generate_one,
    generation_request,
    insert_job,
    make_runner,
    worker_row,
)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    upgrade(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)


def add(sessions: sessionmaker[Session], worker: str, started: float = 60, **fields: Any) -> str:
    """A job of model "m" that ``worker`` has run for ``started`` seconds: a first attempt unless
    ``fields`` say otherwise."""
    started_at = utcnow() - timedelta(seconds=started)
    fields = {"model": "m", "attempts": 1, **fields}
    return insert_job(sessions, status="running", worker_id=worker, started_at=started_at, **fields)


def beat(sessions: sessionmaker[Session], worker: str, age: float, stopped: bool = False) -> None:
    with sessions() as session:
        session.merge(worker_row(worker, ["m"], age, stopped))
        session.commit()


def sweeper(
    sessions: sessionmaker[Session], published: list[tuple[str, str]], notified: list[str]
) -> Sweeper:
    return Sweeper(
        sessions=sessions,
        models=["m"],
        publish=lambda j, m: published.append((j, m)),
        notify=notified.append,
        max_attempts=3,
        lost_after=30,
    )


def status_of(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_jobs_of_lost_stopped_and_unknown_workers_are_requeued(sessions: sessionmaker[Session]) -> None:
    beat(sessions, "alive", age=1)
    beat(sessions, "silent", age=60)
    beat(sessions, "stopped", age=1, stopped=True)
    alive = add(sessions, worker="alive")
    lost = [add(sessions, worker=w) for w in ("silent", "stopped", "never-seen")]
    published: list[tuple[str, str]] = []
    just_claimed = add(sessions, worker="not-yet-beating", started=1)  # its first beat may still come
    result = sweeper(sessions, published, []).recover_lost_jobs()
    assert status_of(sessions, just_claimed).status == "running"
    assert result.requeued == 3 and sorted(j for j, _ in published) == sorted(lost)
    assert status_of(sessions, alive).status == "running"
    for job_id in lost:
        job = status_of(sessions, job_id)
        assert job.status == "queued" and job.worker_id is None and job.attempts == 1


def test_last_attempt_fails_with_a_reason_and_notifies(sessions: sessionmaker[Session]) -> None:
    job_id = add(sessions, worker="gone", attempts=3)
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(webhook_url="http://x"))
        session.commit()
    published: list[tuple[str, str]] = []
    notified: list[str] = []
    result = sweeper(sessions, published, notified).recover_lost_jobs()
    job = status_of(sessions, job_id)
    assert result.failed == 1 and job.status == "failed" and job.error_code == "worker_lost"
    assert "3 attempts" in job.error_message and published == [] and notified == [job_id]


def test_a_lost_job_with_a_cancel_request_ends_canceled(sessions: sessionmaker[Session]) -> None:
    job_id = add(sessions, worker="gone", cancel_requested=True)
    sweeper(sessions, [], []).recover_lost_jobs()
    assert status_of(sessions, job_id).status == "canceled"


class FlakyStorage(LocalStorage):
    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError(f"cannot write {key!r}: connection reset")
        super().put(key, data, content_type)


def test_uploads_are_retried(env: dict[str, Any], tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "flaky", failures=2)
    job_id = enqueue(env)
    runner = make_runner(env, storage=storage)
    runner.storage_attempts = 3
    runner.run_next()
    assert fetch(env, job_id).status == "succeeded" and storage.calls == 3


def test_uploads_that_keep_failing_fail_the_job_and_the_worker_goes_on(
    env: dict[str, Any],
    tmp_path: Path,
) -> None:
    storage = FlakyStorage(tmp_path / "down", failures=10**6)
    runner = make_runner(env, storage=storage)
    runner.storage_attempts = 2
    first = enqueue(env)
    runner.run_next()
    job = fetch(env, first)
    assert job.status == "failed" and job.error_code == "storage_error" and storage.calls == 2
    storage.failures = 0
    second = enqueue(env)
    runner.run_next()
    assert fetch(env, second).status == "succeeded"


class OomPipeline:
    """Stands in for a GPU pipeline: more than ``fits`` images at once run out of memory."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.calls: list[int] = []
        self.scheduler = type("S", (), {"config": {}})()

    def set_progress_bar_config(self, **_: Any) -> None:
        pass

    def __call__(self, prompt: list[str], generator: list[Any], **_: Any) -> Any:
        self.calls.append(len(prompt))
        if len(prompt) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seeds = [g.initial_seed() for g in generator]
        return type("Out", (), {"images": [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]})()


@pytest.fixture
def no_scheduler_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    import easel.worker.engine.generate as generate_module

    monkeypatch.setattr(generate_module, "with_scheduler", lambda pipe, scheduler: pipe)
    monkeypatch.setattr(generate_module, "make_scheduler", lambda name, config: None)


def oom_request(seeds: tuple[int, ...]) -> GenerationRequest:
    return generation_request(
        prompt="p", width=8, height=8, steps=1, guidance_scale=1, scheduler="ddim", seeds=seeds
    )


@pytest.mark.usefixtures("no_scheduler_swap")
def test_out_of_memory_splits_the_batch_and_keeps_seed_order() -> None:
    pipe = OomPipeline(fits=1)
    images = generate_one(pipe, oom_request((10, 11, 12, 13)))
    assert [im.getpixel((0, 0))[0] for im in images] == [10, 11, 12, 13]
    assert pipe.calls == [4, 2, 1, 1, 2, 1, 1]


@pytest.mark.usefixtures("no_scheduler_swap")
def test_out_of_memory_for_one_image_is_a_clear_error() -> None:
    with pytest.raises(GpuOutOfMemory, match="out of GPU memory for one 8x8 image"):
        generate_one(OomPipeline(fits=0), oom_request((1, 2)))
