"""Retention and the flat-cost indexes on the real services: S3 objects really deleted,
PostgreSQL's plans for the hot queries use the indexes, and a worker process prunes by
itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, sessionmaker

from bench.processes import wait_for
from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine
from easel.shared.jobs import active_jobs, list_jobs
from easel.shared.models import Job, JobOutput, JobStatus, utcnow
from easel.shared.retention import Policy, output_key, prune
from easel.shared.settings import Settings
from easel.shared.storage import S3Storage, storage_from_settings
from easel.web.eta import QueueEstimates, cost_model
from easel.web.metrics import histograms, job_counts
from tests.factories import job_row as base_job_row
from tests.factories import make_stack, worker_row


def job_row(status: JobStatus, age_days: float | None, **fields: Any) -> Job:
    finished = utcnow() - timedelta(days=age_days) if age_days is not None else None
    started = finished - timedelta(seconds=2) if finished else None
    values: dict[str, Any] = {
        "status": status.value,
        "created_at": (started or utcnow()) - timedelta(seconds=1),
        "started_at": started if status is not JobStatus.QUEUED else None,
        "finished_at": finished,
    }
    return base_job_row(**{**values, **fields})


def add(sessions: sessionmaker[Session], storage: Any, job: Job, inputs: bool = False) -> str:
    """``job`` with its output stored (and recorded when it succeeded), and its inputs."""
    with sessions() as session:
        session.add(job)
        session.flush()
        storage.put(output_key(job.id, 0), b"png", "image/png")
        if job.status == JobStatus.SUCCEEDED.value:
            session.add(
                JobOutput(
                    job_id=job.id,
                    index=0,
                    seed=1,
                    storage_key=output_key(job.id, 0),
                    width=64,
                    height=64,
                    size_bytes=3,
                )
            )
        if inputs:
            job.input_key = f"jobs/{job.id}/input-image.png"
            storage.put(job.input_key, b"image", "image/png")
        session.commit()
        return job.id


@pytest.fixture
def pg_sessions(fresh_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(fresh_postgres_url)
    engine = make_engine(fresh_postgres_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def test_prune_deletes_s3_objects_and_keeps_active_jobs_on_postgres(
    pg_sessions: sessionmaker[Session], s3: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        storage_url=f"s3://{s3['bucket']}/retention-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3["endpoint"],
    )
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)

    def keys() -> set[str]:
        listing = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix + "/")
        return {item["Key"].removeprefix(storage.prefix + "/") for item in listing.get("Contents", [])}

    old = add(pg_sessions, storage, job_row(JobStatus.SUCCEEDED, 40), inputs=True)
    gone_row = add(pg_sessions, storage, job_row(JobStatus.FAILED, 400), inputs=True)
    queued = add(pg_sessions, storage, job_row(JobStatus.QUEUED, None), inputs=True)
    running = add(pg_sessions, storage, job_row(JobStatus.RUNNING, None, worker_id="w"))
    assert len(keys()) == 7

    policy = Policy(outputs_days=30, inputs_days=7, rows_days=365)
    dry = prune(pg_sessions, storage, policy, dry_run=True)
    assert (dry.rows, dry.outputs, dry.inputs) == (1, 1, 1) and len(keys()) == 7

    report = prune(pg_sessions, storage, policy)
    assert (report.rows, report.outputs, report.inputs) == (1, 1, 1)
    assert keys() == {
        f"jobs/{queued}/0.png",
        f"jobs/{queued}/input-image.png",
        f"jobs/{running}/0.png",
    }
    with pg_sessions() as session:
        assert session.get(Job, gone_row) is None
        pruned = session.get(Job, old)
        assert pruned.outputs_pruned_at is not None and pruned.inputs_pruned_at is not None
        assert [s for s in session.scalars(select(Job.status).order_by(Job.status))] == [
            "queued",
            "running",
            "succeeded",
        ]
    again = prune(pg_sessions, storage, policy)
    assert (again.rows, again.outputs, again.inputs, again.objects) == (0, 0, 0, 0)
    storage.delete([f"jobs/{old}/0.png"])  # deleting what is gone is not an error


def fill_history(sessions: sessionmaker[Session], count: int, owner: str) -> None:
    """``count`` finished jobs of ``owner`` (90% succeeded), then ANALYZE."""
    with sessions() as session:
        session.execute(
            text(
                """
                INSERT INTO jobs (id, type, model, status, priority, prompt, negative_prompt, width,
                    height, steps, guidance_scale, scheduler, seed, num_images, attempts,
                    progress_step, progress_total, cancel_requested, timings, owner_id,
                    webhook_attempts, created_at, started_at, finished_at, updated_at)
                SELECT md5('h' || i), 'txt2img', 'tiny-sd',
                    CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 0, 'h', '', 64, 64, 4,
                    7.5, 'ddim', i, 1, 1, 4, 4, false,
                    CAST('{"generate_seconds": 1.0, "run_seconds": 1.5}' AS json), :owner, 0,
                    now() - interval '1 day' * (i::float / :n) - interval '1 hour',
                    now() - interval '1 day' * (i::float / :n) - interval '59 minutes',
                    now() - interval '1 day' * (i::float / :n) - interval '58 minutes',
                    now()
                FROM generate_series(1, :n) AS i
                """
            ),
            {"n": count, "owner": owner},
        )
        session.commit()
        session.execute(text("ANALYZE jobs"))
        session.commit()


def test_hot_queries_read_indexes_not_the_history_on_postgres(pg_sessions: sessionmaker[Session]) -> None:
    """EXPLAIN of every statement the hot paths run, with 20,000 finished jobs: none scans
    the jobs table sequentially."""
    owner = "o" * 32
    fill_history(pg_sessions, 20_000, owner)
    with pg_sessions() as session:
        queued = [job_row(JobStatus.QUEUED, None, owner_id=owner, seed=i) for i in range(5)]
        session.add_all([*queued, worker_row("w1", ["tiny-sd"])])
        session.commit()
        job = queued[-1]

        captured: list[tuple[str, Any]] = []
        engine = session.get_bind()

        def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", grab)
        try:
            place = QueueEstimates(session, 20, 30.0).place(job)
            assert place.position == 4 and place.eta_seconds is not None and place.workers == 1
            assert cost_model(session, "tiny-sd", 20).rate > 0
            assert active_jobs(session, owner) == 5
            assert len(list_jobs(session, 20, owner=owner)[0]) == 20
            assert len(list_jobs(session, 20, status="failed", owner=owner)[0]) == 20
            assert len(list_jobs(session, 20, status="succeeded")[0]) == 20
            counts = {(status, n) for _, _, status, n in job_counts(session)}
            assert ("queued", 5) in counts
            histograms(session)
            due = prune(pg_sessions, NoStorage(), Policy(30, 7, 365), dry_run=True)
            assert (due.rows, due.outputs, due.inputs) == (0, 0, 0)
        finally:
            event.remove(engine, "before_cursor_execute", grab)
        session.rollback()

        plans = {}
        for statement, parameters in captured:
            if " jobs" not in statement:
                continue
            plan = session.connection().exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
            plans[statement] = "\n".join(plan)
        assert len(plans) >= 8
        scans = {s: p for s, p in plans.items() if "Seq Scan on jobs" in p}
        assert not scans, "\n\n".join(f"{s}\n{p}" for s, p in scans.items())
        used = "\n".join(plans.values())
        # the ETA's bounded sample, the owner's active jobs, what retention finds due
        for index in ("ix_jobs_model_finished", "ix_jobs_owner_status", "ix_jobs_outputs_due"):
            assert index in used, index


class NoStorage:
    """Storage for a dry run: any deletion would be a bug."""

    def delete(self, keys: Any) -> None:
        raise AssertionError(f"a dry run deleted {keys}")


def test_a_worker_process_prunes_by_itself(tmp_path: Path, tiny_model: Path) -> None:
    stack = make_stack(
        tmp_path / "home",
        tiny_model,
        {
            "EASEL_PRELOAD_MODELS": "none",
            "EASEL_RETENTION_OUTPUTS_DAYS": "0.00001",  # under a second
            "EASEL_RETENTION_INTERVAL_SECONDS": "1",
        },
    )
    settings = Settings(home=tmp_path / "home")
    engine = make_engine(settings.database_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    storage = storage_from_settings(settings)
    try:
        job_id = add(sessions, storage, job_row(JobStatus.SUCCEEDED, 0))
        queued = add(sessions, storage, job_row(JobStatus.QUEUED, None, model="not-served"))
        stored = settings.home / "outputs" / "jobs"
        assert (stored / job_id / "0.png").exists()
        stack.start_worker()

        def pruned() -> bool:
            with sessions() as session:
                return session.get(Job, job_id).outputs_pruned_at is not None

        try:
            wait_for(pruned, 60, "the worker's automatic prune")
        except TimeoutError:
            raise AssertionError(f"no automatic prune:\n{stack.logs()}") from None
        assert not (stored / job_id).exists()
        assert (stored / queued / "0.png").exists()
    finally:
        stack.stop()
        engine.dispose()
