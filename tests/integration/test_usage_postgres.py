"""Usage per key on a real database (PostgreSQL, then SQLite): workers finishing one key's
jobs at the same moment lose no increment, ``rebuild`` counts by UTC day whatever the
session's time zone, and a real worker's job shows in REST and ``easel usage``."""

from __future__ import annotations

import subprocess
import threading
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from bench.processes import ROOT, Stack, easel, wait_for
from easel.shared.models import JobStatus, KeyUsage
from easel.shared.transitions import Ending, claim, finish_all
from easel.shared.usage import rebuild
from tests.factories import job_row

WORKERS = 4
JOBS_EACH = 3


def test_concurrent_finishes_add_up(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        jobs = [job_row(owner_id="k", num_images=2) for _ in range(WORKERS * JOBS_EACH)]
        session.add_all(jobs)
        session.commit()
        ids = [job.id for job in jobs]
        batches = [ids[w * JOBS_EACH : (w + 1) * JOBS_EACH] for w in range(WORKERS)]
        for w, batch in enumerate(batches):
            claim(session, batch, f"w{w}", f"b{w}")
        session.commit()
    start = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def finish(w: int) -> None:
        try:
            with sessions() as session:
                start.wait(timeout=30)
                endings = [Ending(i, JobStatus.SUCCEEDED, {"gpu_seconds": 0.5}) for i in batches[w]]
                finish_all(session, f"w{w}", endings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with sessions() as session:
        row = session.execute(select(KeyUsage.jobs, KeyUsage.images, KeyUsage.gpu_seconds)).one()
    assert tuple(row) == (WORKERS * JOBS_EACH, 2 * WORKERS * JOBS_EACH, 0.5 * WORKERS * JOBS_EACH)


def test_rebuild_counts_utc_days(sessions: sessionmaker[Session]) -> None:
    late = datetime(2026, 12, 7, 23, 30, tzinfo=UTC)
    early = datetime(2026, 12, 8, 0, 30, tzinfo=UTC)
    with sessions() as session:
        session.add_all(
            [
                job_row(owner_id="k", status="succeeded", finished_at=late, num_images=2),
                job_row(owner_id="k", status="succeeded", finished_at=early, num_images=3),
                job_row(owner_id="k", status="failed", finished_at=early, num_images=5),
                job_row(owner_id=None, status="succeeded", finished_at=early, num_images=1),
            ]
        )
        session.commit()
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET TIME ZONE 'Asia/Tokyo'"))  # 08:30 and 09:30 on the 8th there
        rebuild(session)
        session.commit()
        found = session.execute(
            select(KeyUsage.owner_key, KeyUsage.day, KeyUsage.jobs, KeyUsage.images).order_by(
                KeyUsage.owner_key, KeyUsage.day
            )
        ).all()
    assert [tuple(r) for r in found] == [
        ("", date(2026, 12, 8), 1, 1),
        ("k", date(2026, 12, 7), 1, 2),
        ("k", date(2026, 12, 8), 1, 3),
    ]


def test_a_real_worker_records_usage_that_rest_and_the_cli_read(services_stack: Stack) -> None:
    """Web and a worker on PostgreSQL: a finished job's images and GPU-seconds show in
    ``GET /api/v1/usage`` and ``easel usage`` for its key only."""
    stack = services_stack
    key = stack.create_key("usage-e2e")
    mine = {"Authorization": f"Bearer {key}"}
    url = stack.base_url
    before = stack.http.get(url + "/api/v1/usage", timeout=10).json()["total"]
    body = {"prompt": "usage", "width": 64, "height": 64, "steps": 2, "num_images": 2}
    job_id = stack.http.post(url + "/api/v1/jobs", json=body, headers=mine, timeout=10).json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = stack.http.get(f"{url}/api/v1/jobs/{job_id}", headers=mine, timeout=10).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    assert wait_for(finished, 120, "the job to finish")["status"] == "succeeded"
    usage = stack.http.get(url + "/api/v1/usage", headers=mine, timeout=10).json()
    assert usage["total"]["jobs"] == 1 and usage["total"]["images"] == 2
    assert usage["total"]["gpu_seconds"] > 0
    assert stack.http.get(url + "/api/v1/usage", timeout=10).json()["total"] == before  # another key's
    printed = subprocess.run(
        easel("usage", "--key", key_prefix(key)), env=stack.env, cwd=str(ROOT), capture_output=True, text=True
    )
    assert printed.returncode == 0, printed.stderr
    assert "usage-e2e" in printed.stdout and printed.stdout.splitlines()[-1].split()[-3:-1] == ["1", "2"]


def key_prefix(key: str) -> str:
    """The prefix `easel keys list` shows of ``key`` (``easel_<prefix>_<secret>``)."""
    return key.split("_")[1]
