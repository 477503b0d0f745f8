"""A deep queue on PostgreSQL: every statement of the calls that read the queue (claim,
submit, poll, list, cancel, /metrics, /admin, KEDA's query, the sweep) is EXPLAINed with
50,000 queued jobs of 200 keys: none scans the jobs table, and none reads more than a
small bound of rows, so their cost does not grow with the queue (docs/design.md
principle 11; the history's counterpart: test_retention_services.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared import queue_turns
from easel.shared.db import make_engine
from easel.shared.jobs import active_jobs, list_jobs
from easel.shared.models import Job, JobStatus, QueueTurn
from easel.shared.transitions import Ending, cancel, finish_all, record_progress, recover_lost
from easel.web.eta import EXACT_AHEAD, QueueEstimates
from easel.web.metrics import job_counts
from easel.worker.engine.claims import claim_batch
from easel.worker.sweeper import Sweeper
from tests.factories import insert_job, worker_row

QUEUED = 50_000
OWNERS = 200
BOUND = 5_000
"""The most rows one statement may read (a tenth of the queue)."""
SCALED_OBJECT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "worker-group" / "scaledobject.yaml"


@pytest.fixture
def pg_sessions(fresh_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(fresh_postgres_url)
    engine = make_engine(fresh_postgres_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def fill(sessions: sessionmaker[Session]) -> None:
    """``QUEUED`` queued jobs of ``OWNERS`` keys over the last two hours (a third of them
    of another batch key), 5,000 finished ones, the queue's state rebuilt, then ANALYZE."""
    columns = """id, type, model, status, priority, prompt, negative_prompt, width, height, steps,
        guidance_scale, scheduler, seed, num_images, attempts, progress_step, progress_total,
        cancel_requested, timings, owner_id, webhook_attempts, created_at, started_at,
        finished_at, updated_at"""
    with sessions() as session:
        session.execute(
            text(
                f"""
                INSERT INTO jobs ({columns})
                SELECT md5('q' || i), 'txt2img', 'tiny-sd', 'queued', 0, 'q', '',
                    CASE WHEN i % 3 = 0 THEN 128 ELSE 64 END, 64, 4, 7.5,
                    'euler', i, 1, 0, 0, 4, false, CAST('{{}}' AS json), md5('o' || (i % :owners)), 0,
                    now() - interval '2 hours' + interval '1 hour' * (i::float / :n), NULL, NULL, now()
                FROM generate_series(1, :n) AS i
                """
            ),
            {"n": QUEUED, "owners": OWNERS},
        )
        session.execute(
            text(
                f"""
                INSERT INTO jobs ({columns})
                SELECT md5('h' || i), 'txt2img', 'tiny-sd', 'succeeded', 0, 'h', '', 64, 64, 4, 7.5,
                    'euler', i, 1, 1, 4, 4, false,
                    CAST('{{"generate_seconds": 1.0, "run_seconds": 1.5}}' AS json),
                    md5('o' || (i % :owners)), 0, now() - interval '3 hours',
                    now() - interval '3 hours' + interval '1 second' * i,
                    now() - interval '3 hours' + interval '1 second' * i + interval '1 second', now()
                FROM generate_series(1, 5000) AS i
                """
            ),
            {"owners": OWNERS},
        )
        queue_turns.rebuild(session)
        session.commit()
        session.execute(text("ANALYZE"))
        session.commit()


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def rows_read(plan: dict[str, Any]) -> int:
    """Rows a plan's nodes produced or filtered out, times their loops."""
    total = 0
    for node in nodes(plan):
        own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        total += int((own + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1))
    return total


def test_the_queues_hot_statements_read_indexes_not_the_queue_on_postgres(
    pg_sessions: sessionmaker[Session],
) -> None:
    fill(pg_sessions)
    owner = "k" * 32
    mine = [insert_job(pg_sessions, owner_id=owner, scheduler="euler", steps=4) for _ in range(6)]
    with pg_sessions() as session:
        session.add(worker_row("w1", ["tiny-sd"]))
        session.commit()
        assert claim_batch(session, "w1", ["tiny-sd"], 1)  # a running job for the sweep and the line
    keda = yaml.safe_load(SCALED_OBJECT.read_text())["spec"]["triggers"][0]["metadata"]["query"]

    captured: list[tuple[str, Any]] = []
    engine = pg_sessions.kw["bind"]

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "INSERT", "DELETE"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        submitted = insert_job(pg_sessions, owner_id=owner)  # a submit's insert and its count
        with pg_sessions() as session:
            assert active_jobs(session, owner) == 7  # the cap's count
            deep = session.get(Job, mine[-1])
            assert deep is not None
            place = QueueEstimates(session, 20, 30.0).place(deep)  # poll: an estimate, far back
            assert place.position is not None and place.position >= EXACT_AHEAD and place.eta_seconds
            listed, _ = list_jobs(session, 20, status=JobStatus.QUEUED.value, owner=owner)
            estimates = QueueEstimates(session, 20, 30.0)
            estimates.prepare(listed)
            assert all(estimates.place(job).position for job in listed)
            assert len(list_jobs(session, 20, status=JobStatus.QUEUED.value)[0]) == 20  # an admin's
            counts = {(status, n) for _, _, status, n in job_counts(session)}  # /metrics
            assert ("queued", QUEUED + 6) in counts and ("running", 1) in counts
            assert sum(n for *_, n in queue_turns.queued_by_type(session)) == QUEUED + 6  # /admin
            assert session.execute(text(keda)).scalar_one() == QUEUED + 7
            assert cancel(session, submitted) is JobStatus.CANCELED
            claimed = claim_batch(session, "w2", ["tiny-sd"], 4)  # the best of 200 keys, and companions
            assert len(claimed) == 4
            for job in claimed:
                recover_lost(session, job.id, "w2", 0, False, 1)
        Sweeper(sessions=pg_sessions, models=[], publish=lambda *_: None).recover_lost_jobs()
    finally:
        event.remove(engine, "before_cursor_execute", grab)

    plans: dict[str, tuple[int, str]] = {}
    with pg_sessions() as session:
        connection = session.connection()
        for statement, parameters in captured:
            if " jobs" not in statement and "queue_turns" not in statement:
                continue
            if statement.lstrip().startswith("INSERT INTO jobs"):
                continue  # one row, nothing read
            savepoint = connection.begin_nested()
            explained = connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = explained.scalar_one()
            savepoint.rollback()
            plan = plan if isinstance(plan, list) else json.loads(plan)
            text_plan = json.dumps(plan)
            plans[statement] = (rows_read(plan[0]["Plan"]), text_plan)
    assert len(plans) >= 20
    scans = [s for s, (_, p) in plans.items() if '"Seq Scan"' in p and '"Relation Name": "jobs"' in p]
    scans = [s for s in scans if any(
        node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "jobs"
        for node in nodes(json.loads(plans[s][1])[0]["Plan"])
    )]  # fmt: skip
    assert not scans, "\n\n".join(scans)
    heavy = {s: n for s, (n, _) in plans.items() if n > BOUND}
    assert not heavy, "\n\n".join(f"{n} rows: {s}" for s, n in heavy.items())
    used = "\n".join(p for _, p in plans.values())
    # an owner's first job (ix_jobs_queue; companions: ix_jobs_queue_key where the planner
    # finds it narrower), the jobs ahead of a queued job. queue_turns has a row per owner
    # and priority (200 here): the planner may read it whole, which no queued job adds to.
    for index in ('"ix_jobs_queue', '"ix_jobs_claim"'):
        assert index in used, index
    with pg_sessions() as session:  # the state still counts every queued job
        assert session.scalar(select(func.sum(QueueTurn.queued))) == QUEUED + 5


def explained(sessions: sessionmaker[Session], captured: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each captured statement of ``jobs`` or ``queue_turns`` (not an insert) EXPLAINed
    with its parameters, run and rolled back: its plan's root node."""
    plans: dict[str, dict[str, Any]] = {}
    with sessions() as session:
        connection = session.connection()
        for statement, parameters in captured:
            about_the_queue = " jobs" in statement or "queue_turns" in statement
            if not about_the_queue or statement.startswith("INSERT"):
                continue
            savepoint = connection.begin_nested()
            plan = connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            found = plan.scalar_one()
            savepoint.rollback()
            plans[statement] = (found if isinstance(found, list) else json.loads(found))[0]["Plan"]
    return plans


def test_a_level_the_statistics_never_saw_is_claimed_through_its_own_indexes_on_postgres(
    pg_sessions: sessionmaker[Session],
) -> None:
    """Jobs at a priority and step count that the last ANALYZE never saw (a new level
    above a deep queue: PostgreSQL analyzes again only after a tenth of the table
    changed), 200 of 8 keys: each statement of a claim of 4, its progress and its finish
    reads a few jobs (the owners' first jobs through ix_jobs_queue, the jobs by their
    ids), not the level through ix_jobs_claim, nor every job that ran through
    ix_jobs_status_finished (queue_turns.pinned, transitions._HELD)."""
    fill(pg_sessions)
    level = [
        insert_job(pg_sessions, owner_id=f"n{i % 8}", priority=1, steps=7, scheduler="euler", age=200 - i)
        for i in range(200)
    ]
    with pg_sessions() as session:
        session.add(worker_row("w1", ["tiny-sd"]))
        session.commit()
        assert claim_batch(session, "w1", ["tiny-sd"], 4)  # a claim's statements, prepared once

    captured: list[tuple[str, Any]] = []
    engine = pg_sessions.kw["bind"]

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with pg_sessions() as session:
            claimed = claim_batch(session, "w2", ["tiny-sd"], 4)
            assert len(claimed) == 4 and {job.id for job in claimed} <= set(level)
            assert len({job.owner_id for job in claimed}) == 4  # owners take turns
            ids = [job.id for job in claimed]
            assert record_progress(session, ids, "w2", 1, 7) == dict.fromkeys(ids, False)
            session.commit()
            endings = [Ending(job_id, JobStatus.SUCCEEDED, {"generate_seconds": 1.0}) for job_id in ids]
            assert finish_all(session, "w2", endings) == [JobStatus.SUCCEEDED] * 4
    finally:
        event.remove(engine, "before_cursor_execute", grab)

    plans = explained(pg_sessions, captured)
    assert len(plans) >= 8
    # queue_turns has a row per owner and level (208 here), which the planner may read
    # whole (as above); the jobs table is the queue
    of_jobs = {s: p for s, p in plans.items() if any(n.get("Relation Name") == "jobs" for n in nodes(p))}
    assert len(of_jobs) >= 6
    heavy = {s: rows_read(plan) for s, plan in of_jobs.items() if rows_read(plan) > 40}
    assert not heavy, "\n\n".join(f"{n} rows: {s}" for s, n in heavy.items())
    used = {node.get("Index Name") for plan in plans.values() for node in nodes(plan)}
    assert "ix_jobs_queue" in used and "jobs_pkey" in used
    assert not used & {"ix_jobs_claim", "ix_jobs_status_finished", "ix_jobs_queue_key"}, used
