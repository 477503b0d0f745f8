"""Chaos run: N jobs through real web and worker processes on PostgreSQL + Redis while
workers are killed with SIGKILL, Redis restarts empty and the database stops; or, with
``--embedded``, through ``easel run`` on its embedded defaults (SQLite, the SQLite
broker, a local folder) while its worker is killed and the supervisor restarts it.

    python -m bench.chaos --jobs 200 --workers 2 --kills 8 --redis-restarts 2 --db-stops 2
    python -m bench.chaos --embedded --jobs 100 --kills 5

Prints one JSON object: jobs accepted, succeeded, failed, lost, run twice, duplicated
outputs, the chaos done, and the seconds to drain. Private Redis and PostgreSQL
servers and an S3 endpoint (moto) are started for the run; nothing shared is touched.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text

from bench._stack import (
    TERMINAL,
    Services,
    bench_parser,
    easel_stack,
    emit,
    exit_cleanly_on_sigterm,
    post_job,
    progress,
    services,
)
from bench.processes import FAST_RECOVERY_SETTINGS, Stack, easel, wait_for

CHAOS_SETTINGS = {
    **FAST_RECOVERY_SETTINGS,
    "EASEL_RESTART_BACKOFF_SECONDS": "0.2",
    "EASEL_MAX_ATTEMPTS": "10",
    "EASEL_PROGRESS_INTERVAL_SECONDS": "0.2",
}


@dataclass
class Report:
    jobs_requested: int
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    lost: int = 0
    run_twice: int = 0
    duplicated_outputs: int = 0
    worker_kills: int = 0
    redis_restarts: int = 0
    db_stops: int = 0
    submit_retries: int = 0
    seconds_to_drain: float = 0.0
    seconds_total: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


def _submit(
    session: requests.Session, stack: Stack, payload: dict[str, Any], report: Report, deadline: float
) -> str | None:
    """POST with an Idempotency-Key, retried through 429/503 and connection errors."""
    job_id, retries = post_job(session, stack.base_url, payload, deadline)
    report.submit_retries += retries
    return job_id


def _status(stack: Stack, job_id: str) -> str:
    try:
        return stack.job(job_id)["status"]
    except requests.RequestException:
        return "unknown"


def run(
    jobs: int = 30,
    workers: int = 2,
    kills: int = 3,
    redis_restarts: int = 1,
    db_stops: int = 1,
    seed: int = 0,
    timeout: float = 600,
    tiny_model: Path | None = None,
    keep: bool = False,
    embedded: bool = False,
) -> Report:
    """One chaos run; returns its report (also usable from tests)."""
    if embedded and (redis_restarts or db_stops):
        raise ValueError("the embedded stack has no Redis or PostgreSQL to restart: use 0 for both")
    rng = random.Random(seed)
    report = Report(jobs_requested=jobs)
    started = time.monotonic()
    with (
        services(private=True, bucket="chaos", embedded=embedded) as found,
        easel_stack(found, CHAOS_SETTINGS, tiny_model, keep=keep, prefix="easel-chaos-") as stack,
    ):
        accepted: list[str] = []
        try:
            if embedded:
                start_easel_run(stack)
            else:
                stack.start_web()
                for n in range(workers):
                    stack.start_worker(f"worker-{n}")
            deadline = started + timeout
            _chaos(stack, found, jobs, kills, redis_restarts, db_stops, rng, report, accepted, deadline)
            drain_started = time.monotonic()
            progress(f"submitted {len(accepted)} jobs and done the chaos; draining")
            wait_for(
                lambda: all(_status(stack, j) in TERMINAL for j in accepted),
                max(30.0, deadline - time.monotonic()),
                "every accepted job to finish",
                interval=0.5,
            )
            report.seconds_to_drain = round(time.monotonic() - drain_started, 1)
        except TimeoutError:
            pass  # reported as lost below
        finally:
            report.accepted = len(accepted)
            statuses = Counter(_status(stack, j) for j in accepted)
            report.succeeded, report.failed, report.canceled = (
                statuses[s] for s in ("succeeded", "failed", "canceled")
            )
            report.lost = report.accepted - report.succeeded - report.failed - report.canceled
            _count_duplicates(stack, accepted, found.s3, report)
            report.seconds_total = round(time.monotonic() - started, 1)
    return report


def _chaos(
    stack: Stack,
    found: Services,
    jobs: int,
    kills: int,
    redis_restarts: int,
    db_stops: int,
    rng: random.Random,
    report: Report,
    accepted: list[str],
    deadline: float,
) -> None:
    """Submit ``jobs`` from a thread while workers are killed, Redis restarts empty and
    PostgreSQL stops, one event at a time over the submission window."""

    def submitter() -> None:
        with requests.Session() as session:
            for i in range(jobs):
                payload = {
                    "prompt": f"chaos {i}",
                    "width": 64,
                    "height": 64,
                    "steps": rng.randint(4, 30),
                    "num_images": rng.choice([1, 1, 2]),
                    "seed": i,
                }
                job_id = _submit(session, stack, payload, report, deadline)
                if job_id:
                    accepted.append(job_id)
                time.sleep(rng.uniform(0.0, 0.15))

    thread = threading.Thread(target=submitter)
    thread.start()
    events = ["kill"] * kills + ["redis"] * redis_restarts + ["db"] * db_stops
    rng.shuffle(events)
    for index, event in enumerate(events):
        time.sleep(rng.uniform(0.5, 2.5))
        if event == "kill" and found.embedded:
            kill_supervised_worker(stack)
            report.worker_kills += 1
        elif event == "kill":
            live = [p for p in stack.processes if p.name.startswith("worker") and p.popen.poll() is None]
            victim = rng.choice(live)
            os.killpg(victim.popen.pid, signal.SIGKILL)
            victim.popen.wait(timeout=30)
            report.worker_kills += 1
            stack.start_worker(f"worker-r{index}")
        elif event == "redis":
            assert found.redis is not None
            found.redis.restart_empty()
            report.redis_restarts += 1
        else:
            assert found.postgres is not None
            found.postgres.stop()
            time.sleep(rng.uniform(1.0, 3.0))  # the outage itself
            found.postgres.start()
            report.db_stops += 1
        progress(f"chaos event {index + 1}/{len(events)}: {event}")
    thread.join()


def start_easel_run(stack: Stack) -> None:
    """``easel run`` (web, worker and webhook sender under its supervisor), once it serves."""
    run = stack.start("run", easel("run"), {"EASEL_PORT": str(stack.port), "EASEL_WEB_WORKERS": "1"})
    wait_for(
        lambda: not run.running() or requests.get(stack.base_url + "/readyz", timeout=2).ok,
        120,
        "easel run to serve",
    )
    if not run.running():
        raise RuntimeError(f"easel run exited:\n{run.log()[-3000:]}")


def kill_supervised_worker(stack: Stack) -> None:
    """SIGKILL the worker that beats now; wait until the supervisor has started another."""
    run = next(p for p in stack.processes if p.name == "run")
    restarts = run.log().count("restarting it")
    os.kill(int(wait_for(stack.live_worker_pid, 60, "a live worker")), signal.SIGKILL)
    wait_for(lambda: run.log().count("restarting it") > restarts, 60, "the supervisor's restart")


def _stored_objects(stack: Stack, s3: Any) -> Counter[str]:
    """Stored output images per job id (not previews or inputs): the S3 bucket, or the
    local outputs folder."""
    if s3 is None:
        root = stack.workdir / "outputs" / "jobs"
        return Counter(path.parent.name for path in root.glob("*/[0-9]*.png"))
    keys = (
        obj["Key"].split("/")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="chaos", Prefix="out/jobs/")
        for obj in page.get("Contents", [])
    )
    return Counter(parts[2] for parts in keys if re.fullmatch(r"\d+\.png", parts[-1]))  # not previews


def _count_duplicates(stack: Stack, accepted: list[str], s3: Any, report: Report) -> None:
    """Run twice: a job whose pipeline ran to the end more than once. Duplicated outputs:
    a job with more output rows or stored objects than images."""
    logs = "".join(p.log() for p in stack.processes if p.name.startswith(("worker", "run")))
    completions = Counter(re.findall(r"job ([0-9a-f]{32}) (?:succeeded in|is no longer ours)", logs))
    report.run_twice = sum(1 for job_id in accepted if completions[job_id] > 1)
    engine = create_engine(stack.env["EASEL_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT j.id, j.num_images, j.status, count(o.id) FROM jobs j "
                    "LEFT JOIN job_outputs o ON o.job_id = j.id GROUP BY j.id, j.num_images, j.status"
                )
            ).all()
            failures = conn.execute(
                text("SELECT error_code, count(*) FROM jobs WHERE status = 'failed' GROUP BY error_code")
            ).all()
    finally:
        engine.dispose()
    objects = _stored_objects(stack, s3)
    report.duplicated_outputs = sum(
        1
        for job_id, images, status, outputs in rows
        if outputs > images or objects[job_id] > images or (status == "succeeded" and outputs != images)
    )
    report.failures = {code or "none": int(n) for code, n in failures}


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(None, __doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--db-stops", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and process logs")
    parser.add_argument(
        "--embedded", action="store_true", help="easel run on its embedded defaults (no Redis or PostgreSQL)"
    )
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    report = run(
        args.jobs,
        args.workers,
        args.kills,
        args.redis_restarts,
        args.db_stops,
        args.seed,
        args.timeout,
        keep=args.keep,
        embedded=args.embedded,
    )
    emit(asdict(report))


if __name__ == "__main__":
    main()
