"""Ending a batch of running jobs in one transaction (``shared.transitions.finish_all``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from easel.shared.models import Job, JobCount, JobDuration, JobOutput, JobStatus, utcnow
from easel.shared.stats import rebuild
from easel.shared.transitions import Ending, claim, finish_all
from tests.factories import job_row


def counters(session: Session) -> tuple[list[Any], dict[tuple[str, str, str], tuple[int, float]]]:
    """The job counts, and each duration bucket's (count, total)."""
    counts = session.execute(select(JobCount.model, JobCount.type, JobCount.status, JobCount.count)).all()
    durations = session.execute(
        select(JobDuration.kind, JobDuration.model, JobDuration.bucket, JobDuration.count, JobDuration.total)
    ).all()
    return sorted(map(tuple, counts)), {(k, m, b): (n, t) for k, m, b, n, t in durations}


def output(job_id: str) -> JobOutput:
    return JobOutput(
        job_id=job_id,
        index=0,
        seed=1,
        storage_key=f"jobs/{job_id}/0.png",
        width=64,
        height=64,
        content_type="image/png",
        size_bytes=10,
    )


def test_a_batch_ends_in_one_transaction_and_counts_as_its_jobs_would_one_by_one(
    env: dict[str, Any],
) -> None:
    sessions = env["sessions"]
    with sessions() as session:
        jobs = [job_row(created_at=utcnow() - timedelta(seconds=age)) for age in (0.3, 2.0, 7.0, 0.1)]
        session.add_all(jobs)
        session.flush()
        ids = [job.id for job in jobs]
        claimed = claim(session, ids, "w1", "batch-1", 4)
        assert sorted(job.id for job in claimed) == sorted(ids)
        moved = {(job.status, job.worker_id, job.batch_size, job.attempts) for job in claimed}
        assert moved == {("running", "w1", 4, 1)}
        # One job was asked to cancel meanwhile; another was requeued and claimed by w2.
        session.execute(update(Job).where(Job.id == ids[2]).values(cancel_requested=True))
        session.execute(update(Job).where(Job.id == ids[3]).values(worker_id="w2"))
        session.commit()

    commits: list[bool] = []
    with sessions() as session:
        event.listen(session, "after_commit", lambda _: commits.append(True))
        got = finish_all(
            session,
            "w1",
            [
                Ending(job_id, JobStatus.SUCCEEDED, {"run_seconds": 1.0}, outputs=[output(job_id)])
                for job_id in ids
            ],
        )
    assert got == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.CANCELED, None]
    assert commits == [True]

    with sessions() as session:
        rows = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        assert [rows[i].status for i in ids] == ["succeeded", "succeeded", "canceled", "running"]
        assert rows[ids[3]].worker_id == "w2" and rows[ids[3]].finished_at is None
        stored = session.scalars(select(JobOutput.job_id).order_by(JobOutput.job_id)).all()
        assert stored == sorted(ids[:2])  # a canceled job publishes nothing
        maintained = counters(session)
        assert maintained[0] == [
            ("tiny-sd", "txt2img", "canceled", 1),
            ("tiny-sd", "txt2img", "succeeded", 2),
        ]
        rebuild(session)  # the counters recomputed from the rows agree with the maintained ones
        counts, durations = counters(session)
        assert counts == maintained[0] and durations.keys() == maintained[1].keys()
        for key, (count, total) in durations.items():  # SQLite's julianday() is coarser than Python
            assert maintained[1][key] == (count, pytest.approx(total, abs=0.005))
        session.rollback()
