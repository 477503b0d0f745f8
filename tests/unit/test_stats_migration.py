"""Migration 0006 counts the jobs that finished before it, so /metrics carries on."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, select, text

from easel.migrations.upgrade import upgrade
from easel.shared.models import JobCount, JobDuration, utcnow


def test_upgrade_fills_the_statistics_from_finished_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0005")
    engine = create_engine(url)
    created = utcnow() - timedelta(days=3)
    rows = [  # (id, status, started after, ran for)
        ("a", "succeeded", 2.0, 3.0),
        ("b", "succeeded", 0.3, 0.4),
        ("c", "failed", 40.0, 1.5),
        ("d", "queued", None, None),
    ]
    with engine.begin() as conn:
        for job_id, status, wait, run in rows:
            started = created + timedelta(seconds=wait) if wait is not None else None
            finished = started + timedelta(seconds=run) if started and run is not None else None
            conn.execute(
                text(
                    "INSERT INTO jobs (id, type, model, status, priority, prompt, negative_prompt, width,"
                    " height, steps, guidance_scale, scheduler, seed, num_images, attempts, progress_step,"
                    " progress_total, cancel_requested, timings, webhook_attempts, created_at, started_at,"
                    " finished_at, updated_at) VALUES (:id, 'txt2img', 'm', :status, 0, 'p', '', 64, 64,"
                    " 2, 7.5, 'ddim', 1, 1, 1, 0, 2, 0, '{}', 0, :created, :started, :finished, :created)"
                ),
                {
                    "id": job_id,
                    "status": status,
                    "created": created,
                    "started": started,
                    "finished": finished,
                },
            )
    upgrade(url)
    with engine.connect() as conn:
        counts = conn.execute(select(JobCount.status, JobCount.count).order_by(JobCount.status)).all()
        durations = conn.execute(
            select(JobDuration.kind, JobDuration.bucket, JobDuration.count, JobDuration.total).order_by(
                JobDuration.kind, JobDuration.bucket
            )
        ).all()
    engine.dispose()
    assert [tuple(r) for r in counts] == [("failed", 1), ("succeeded", 2)]
    by_bucket = {(kind, bucket): (n, round(total, 3)) for kind, bucket, n, total in durations}
    assert by_bucket == {
        ("run", "0.5"): (1, 0.4),
        ("run", "2.5"): (1, 1.5),
        ("run", "5.0"): (1, 3.0),
        ("wait", "0.5"): (1, 0.3),
        ("wait", "2.5"): (1, 2.0),
        ("wait", "60.0"): (1, 40.0),
    }
