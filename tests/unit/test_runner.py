"""JobRunner on SQLite, a local folder and the real tiny pipeline (no Celery)."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from bench.processes import wait_for
from easel.shared.errors import StorageError
from easel.shared.models import Job, JobOutput
from easel.shared.storage import LocalStorage
from easel.worker.engine import runner as runner_module
from easel.worker.engine.runner import JobRunner, ProgressReporter
from easel.worker.pngmeta import read_parameters
from tests.factories import enqueue, fetch, make_runner


def test_runs_a_job_to_success(env: dict[str, Any]) -> None:
    job_id = enqueue(env, seed=40, num_images=2, width=64, height=80)
    runner = make_runner(env)
    assert runner.run_next() == job_id
    assert runner.run_next() is None
    job = fetch(env, job_id)
    assert job.status == "succeeded" and job.error_code is None
    assert job.progress_step == 3 and job.progress_total == 3
    assert [(o.index, o.seed, o.width, o.height) for o in job.outputs] == [(0, 40, 64, 80), (1, 41, 64, 80)]
    data = env["storage"].get(job.outputs[1].storage_key)
    assert read_parameters(data)["seed"] == 41
    assert set(job.timings) >= {
        "queue_seconds",
        "load_seconds",
        "generate_seconds",
        "store_seconds",
        "run_seconds",
        "model_cache_hit",
    }
    assert job.timings["model_cache_hit"] is False


def test_second_job_uses_the_warm_pipeline(env: dict[str, Any]) -> None:
    runner = make_runner(env)
    for _ in range(2):
        enqueue(env)
        runner.run_next()
    assert runner.cache.loads == {"tiny-sd": 1}


class BrokenStorage(LocalStorage):
    def put(self, key: str, data: bytes, content_type: str) -> None:
        raise StorageError(f"cannot write {key!r}: disk full")


def test_storage_failure_fails_the_job_with_a_code(env: dict[str, Any], tmp_path: Path) -> None:
    job_id = enqueue(env)
    make_runner(env, storage=BrokenStorage(tmp_path / "broken")).run_next()
    job = fetch(env, job_id)
    assert job.status == "failed" and job.error_code == "storage_error"
    assert "disk full" not in job.error_message and "storage" in job.error_message  # no server paths
    assert "disk full" in job.timings["error_detail"] and job.finished_at is not None
    with env["sessions"]() as session:
        assert session.query(JobOutput).count() == 0


def run_canceling_at_step(env: dict[str, Any], runner: JobRunner, job_id: str, step: int) -> None:
    """``runner.run_next()``, with a cancel of ``job_id`` requested as step ``step`` ends."""
    original_call = ProgressReporter.__call__

    def cancel_then_report(self: ProgressReporter, done: int, total: int) -> None:
        if done == step:
            with env["sessions"]() as session:
                session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
                session.commit()
        original_call(self, done, total)

    ProgressReporter.__call__ = cancel_then_report  # type: ignore[method-assign]
    try:
        runner.run_next()
    finally:
        ProgressReporter.__call__ = original_call  # type: ignore[method-assign]


def test_cancel_request_stops_at_the_next_step(env: dict[str, Any]) -> None:
    job_id = enqueue(env, steps=30)
    run_canceling_at_step(env, make_runner(env), job_id, step=2)
    job = fetch(env, job_id)
    assert job.status == "canceled" and job.progress_step == 2 and not job.outputs


def reporter_of_running_job(env: dict[str, Any]) -> tuple[str, list[float], ProgressReporter]:
    """A job running on ``test:1``, and a reporter for it (interval 1 s) on a clock set by
    writing ``now[0]``."""
    job_id = enqueue(env)
    with env["sessions"]() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="running", worker_id="test:1"))
        session.commit()
    now = [0.0]
    reporter = ProgressReporter(env["sessions"], job_id, "test:1", interval=1.0, clock=lambda: now[0])
    return job_id, now, reporter


def test_progress_writes_are_throttled(env: dict[str, Any]) -> None:
    job_id, now, reporter = reporter_of_running_job(env)
    for step, at in ((1, 0.1), (2, 0.9), (3, 1.0), (4, 1.5), (5, 2.1), (6, 2.2)):
        now[0] = at
        reporter(step, 10)
    assert reporter.writes == 2  # one interval after the start, then one interval after that
    assert fetch(env, job_id).progress_step == 5
    now[0] = 2.3
    reporter(10, 10)
    assert reporter.writes == 3 and fetch(env, job_id).progress_step == 10  # the last step, at once


def test_a_call_shorter_than_the_interval_writes_no_progress(env: dict[str, Any]) -> None:
    """Its ending records the job; a write at its first or last step would only cost a
    transaction in the denoising thread."""
    job_id, now, reporter = reporter_of_running_job(env)
    for step in range(1, 11):
        now[0] = step * 0.09
        reporter(step, 10)
    assert reporter.writes == 0 and fetch(env, job_id).progress_step == 0


def test_a_job_no_longer_ours_is_not_overwritten(env: dict[str, Any]) -> None:
    job_id = enqueue(env)
    runner = make_runner(env)
    with env["sessions"]() as session:
        job = session.get(Job, job_id)
        session.execute(
            update(Job).where(Job.id == job_id).values(status="running", worker_id="someone-else")
        )
        session.commit()
        session.expunge(job)
    runner.run_batch([job])
    after = fetch(env, job_id)
    assert after.status == "running" and after.worker_id == "someone-else" and not after.outputs


def test_job_over_its_time_limit_fails_and_the_worker_goes_on(env: dict[str, Any]) -> None:
    job_id = enqueue(env, steps=20)
    runner = make_runner(env)
    runner.time_limit = 1e-6  # past at the first step callback
    runner.run_next()
    job = fetch(env, job_id)
    assert job.status == "failed" and job.error_code == "time_limit" and not job.outputs
    assert "time limit at step 1 of" in (job.error_message or "")
    runner.time_limit = 0.0
    after = enqueue(env)
    runner.run_next()
    assert fetch(env, after).status == "succeeded"


def make_batching_runner(env: dict[str, Any], max_images: int = 4, **kwargs: Any) -> JobRunner:
    runner = make_runner(env, **kwargs)
    runner.max_batch_images = max_images
    return runner


def pixels(env: dict[str, Any], job: Job) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(env["storage"].get(o.storage_key)))) for o in job.outputs]


def test_compatible_jobs_run_as_one_batch_with_the_pixels_they_get_alone(env: dict[str, Any]) -> None:
    fields = [
        {"prompt": "a red fox", "seed": 3, "num_images": 2},
        {"prompt": "a blue lake", "seed": 9, "negative_prompt": "fog"},
        {"prompt": "a green hill", "seed": 3},
    ]
    ids = [enqueue(env, **f, width=64, height=64) for f in fields]
    other_key = enqueue(env, prompt="a cat", width=72, height=64)
    runner = make_batching_runner(env)
    assert runner.run_next() == ids[0]
    batched = [fetch(env, job_id) for job_id in ids]
    assert all(job.status == "succeeded" for job in batched)
    assert len({job.batch_id for job in batched}) == 1 and batched[0].batch_id is not None
    assert {job.batch_size for job in batched} == {4}
    assert fetch(env, other_key).status == "queued"  # another batch key never joins

    alone = make_runner(env)  # max one image per call
    for f in fields:
        enqueue(env, **f, width=64, height=64)
    while alone.run_next() is not None:
        pass
    with env["sessions"]() as session:
        singles = (
            session.query(Job)
            .filter(Job.status == "succeeded", Job.id.notin_([*ids, other_key]))
            .order_by(Job.created_at)
            .all()
        )
    assert [job.batch_size for job in singles] == [2, 1, 1]  # the 2-image job still runs whole
    for job, single in zip(batched, singles, strict=True):
        for a, b in zip(pixels(env, job), pixels(env, single), strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # equal within quantization


def test_a_canceled_job_leaves_the_batch_and_the_others_finish(env: dict[str, Any]) -> None:
    ids = [enqueue(env, steps=30, seed=i) for i in range(3)]
    run_canceling_at_step(env, make_batching_runner(env), ids[1], step=2)
    jobs = [fetch(env, job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded", "canceled", "succeeded"]
    assert jobs[1].progress_step == 2 and not jobs[1].outputs  # it left at the step it was canceled
    assert len(jobs[0].outputs) == 1 and len(jobs[2].outputs) == 1


@pytest.mark.parametrize("overlap_store", [False, True])
def test_a_cancel_after_the_last_step_stores_nothing_for_that_job(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, overlap_store: bool
) -> None:
    """A cancel asked once denoising is over (while decoding) is read before anything is
    uploaded: that job ends ``canceled`` with no outputs and no stored object, and the
    others of its batch succeed."""
    ids = [enqueue(env, seed=i) for i in range(3)]
    generate = runner_module.generate_batch

    def generate_then_cancel(*args: Any, **kwargs: Any) -> Any:
        images = generate(*args, **kwargs)
        with env["sessions"]() as session:
            session.execute(update(Job).where(Job.id == ids[1]).values(cancel_requested=True))
            session.commit()
        return images

    monkeypatch.setattr(runner_module, "generate_batch", generate_then_cancel)
    runner = make_batching_runner(env)
    runner.overlap_store = overlap_store
    assert runner.run_next() == ids[0]
    runner.drain()
    jobs = [fetch(env, job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["succeeded", "canceled", "succeeded"]
    assert jobs[1].progress_step == jobs[1].progress_total and not jobs[1].outputs
    assert not list((env["storage"].root / "jobs" / ids[1]).glob("*.png"))
    assert len(jobs[0].outputs) == 1 and len(jobs[2].outputs) == 1


def test_a_job_with_a_missing_input_fails_alone(env: dict[str, Any]) -> None:
    good = enqueue(env, seed=1)
    bad = enqueue(env, seed=2)
    with env["sessions"]() as session:  # a txt2img row pointing at an input that is not stored
        session.execute(update(Job).where(Job.id == bad).values(input_key="jobs/nowhere/image.png"))
        session.commit()
    make_batching_runner(env).run_next()
    assert fetch(env, good).status == "succeeded"
    failed = fetch(env, bad)
    assert failed.status == "failed" and failed.error_code is not None


class GatedStorage(LocalStorage):
    """Uploads wait until ``gate`` opens."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        assert self.gate.wait(60), "the test never opened the gate"
        super().put(key, data, content_type)


def test_the_next_batch_starts_while_the_last_one_is_stored(env: dict[str, Any], tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "gated")
    runner = make_runner(env, storage=storage)
    runner.overlap_store = True
    first, second = enqueue(env, seed=1), enqueue(env, seed=2)
    assert runner.run_next() == first  # generated; its upload is blocked
    assert fetch(env, first).status == "running"  # not succeeded before its outputs are stored
    generated = threading.Thread(target=runner.run_next)
    generated.start()  # the next batch generates meanwhile, then waits for the first upload
    wait_for(lambda: fetch(env, second).progress_step == 3, 60, "the second job denoised")
    assert fetch(env, first).status == "running"
    storage.gate.set()
    generated.join(60)
    runner.drain()
    assert [fetch(env, job_id).status for job_id in (first, second)] == ["succeeded", "succeeded"]


def test_a_failed_batch_is_run_job_by_job_so_only_the_bad_job_fails(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import easel.worker.engine.runner as runner_module

    real = runner_module.generate_batch
    calls: list[int] = []

    def poisoned(pipe: Any, requests: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(len(requests))
        if any(r.params.prompt == "poison" for r in requests):
            raise RuntimeError("the poison prompt breaks the call")
        return real(pipe, requests, *args, **kwargs)

    monkeypatch.setattr(runner_module, "generate_batch", poisoned)
    good, bad, other = (enqueue(env, prompt=p, seed=i) for i, p in enumerate(("fine", "poison", "also fine")))
    make_batching_runner(env).run_next()
    assert calls == [3, 1, 1, 1]  # the batch, then each job alone
    assert [fetch(env, job_id).status for job_id in (good, bad, other)] == [
        "succeeded",
        "failed",
        "succeeded",
    ]
    failed = fetch(env, bad)
    assert failed.error_code == "generation_error" and "poison" not in failed.error_message  # no internals
    assert "RuntimeError: the poison prompt breaks the call" in failed.timings["error_detail"]  # for /admin


def test_the_time_limit_in_a_batch_fails_every_job_left(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import easel.worker.engine.runner as runner_module
    from easel.worker.engine.generate import TimeLimitExceeded

    def out_of_time(*args: Any, **kwargs: Any) -> list[Any]:
        raise TimeLimitExceeded("the batch ran past its time limit")

    monkeypatch.setattr(runner_module, "generate_batch", out_of_time)
    ids = [enqueue(env, seed=i) for i in range(2)]
    make_batching_runner(env).run_next()
    assert {(fetch(env, job_id).status, fetch(env, job_id).error_code) for job_id in ids} == {
        ("failed", "time_limit")
    }
