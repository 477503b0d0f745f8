"""Chaos run: N jobs through real web and worker processes on PostgreSQL + Redis while
workers are killed with SIGKILL, Redis restarts empty and the database stops.

    python -m bench.chaos --jobs 200 --workers 2 --kills 8 --redis-restarts 2 --db-stops 2

Prints one JSON object: jobs accepted, succeeded, failed, lost, run twice, duplicated
outputs, the chaos done, and the seconds to drain. Private Redis and PostgreSQL
servers and an S3 endpoint (moto) are started for the run; nothing shared is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests
from sqlalchemy import create_engine, text

from tests.servers import PrivatePostgres, PrivateRedis
from tests.support import Stack, base_env, free_port, wait_for

CHAOS_SETTINGS = {
    "EASEL_HEARTBEAT_SECONDS": "0.5",
    "EASEL_WORKER_LOST_AFTER_SECONDS": "3",
    "EASEL_IDLE_REPUBLISH_SECONDS": "2",
    "EASEL_MAX_ATTEMPTS": "10",
    "EASEL_AUTH_ENABLED": "false",
    "EASEL_PROGRESS_INTERVAL_SECONDS": "0.2",
    "EASEL_CPU_THREADS": "1",  # two CPU workers on two cores: one thread each, not four
}
TERMINAL = {"succeeded", "failed", "canceled"}


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


def _submit(stack: Stack, payload: dict[str, Any], report: Report, deadline: float) -> str | None:
    """POST with an Idempotency-Key, retried through 503s and connection errors."""
    key = uuid.uuid4().hex
    while time.monotonic() < deadline:
        try:
            response = requests.post(
                stack.base_url + "/api/v1/jobs", json=payload, timeout=15, headers={"Idempotency-Key": key}
            )
        except requests.RequestException:
            report.submit_retries += 1
            time.sleep(0.2)
            continue
        if response.status_code == 202:
            return response.json()["id"]
        if response.status_code not in (429, 503):
            raise RuntimeError(f"unexpected {response.status_code}: {response.text}")
        report.submit_retries += 1
        time.sleep(0.2)
    return None


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
) -> Report:
    """One chaos run; returns its report (also usable from tests)."""
    from moto.server import ThreadedMotoServer

    rng = random.Random(seed)
    report = Report(jobs_requested=jobs)
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="easel-chaos-"))
    redis_server, postgres = PrivateRedis().start(), PrivatePostgres().start()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto._port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "chaos",
        "AWS_SECRET_ACCESS_KEY": "chaos",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="chaos",
        aws_secret_access_key="chaos",
    )
    s3.create_bucket(Bucket="chaos")
    if tiny_model is not None:
        from tests.support import install_tiny_model

        install_tiny_model(tiny_model, home)
    env = base_env(
        home,
        **CHAOS_SETTINGS,
        **creds,
        EASEL_DATABASE_URL=postgres.url,
        EASEL_BROKER_URL=redis_server.url,
        EASEL_STORAGE_URL="s3://chaos/out",
        EASEL_S3_ENDPOINT_URL=endpoint,
    )
    stack = Stack(env=env, workdir=home)
    accepted: list[str] = []
    try:
        stack.migrate()
        stack.start_web()
        for n in range(workers):
            stack.start_worker(f"worker-{n}")
        deadline = started + timeout
        done_submitting = threading.Event()

        def submitter() -> None:
            for i in range(jobs):
                payload = {
                    "prompt": f"chaos {i}",
                    "width": 64,
                    "height": 64,
                    "steps": rng.randint(4, 30),
                    "num_images": rng.choice([1, 1, 2]),
                    "seed": i,
                }
                job_id = _submit(stack, payload, report, deadline)
                if job_id:
                    accepted.append(job_id)
                time.sleep(rng.uniform(0.0, 0.15))
            done_submitting.set()

        thread = threading.Thread(target=submitter)
        thread.start()
        # The chaos, spread over the submission window, one event at a time.
        events = ["kill"] * kills + ["redis"] * redis_restarts + ["db"] * db_stops
        rng.shuffle(events)
        for index, event in enumerate(events):
            time.sleep(rng.uniform(0.5, 2.5))
            if event == "kill":
                live = [p for p in stack.processes if p.name.startswith("worker") and p.popen.poll() is None]
                victim = rng.choice(live)
                os.killpg(victim.popen.pid, signal.SIGKILL)
                victim.popen.wait(timeout=30)
                report.worker_kills += 1
                stack.start_worker(f"worker-r{index}")
            elif event == "redis":
                redis_server.restart_empty()
                report.redis_restarts += 1
            else:
                postgres.stop()
                time.sleep(rng.uniform(1.0, 3.0))  # the outage itself
                postgres.start()
                report.db_stops += 1
        thread.join()
        drain_started = time.monotonic()
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
        _count_duplicates(stack, accepted, s3, report)
        report.seconds_total = round(time.monotonic() - started, 1)
        stack.stop()
        redis_server.stop()
        postgres.destroy()
        moto.stop()
    return report


def _count_duplicates(stack: Stack, accepted: list[str], s3: Any, report: Report) -> None:
    """Run twice: a job whose pipeline ran to the end more than once. Duplicated outputs:
    a job with more output rows or stored objects than images."""
    logs = stack.worker_log()
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
    objects = Counter(
        obj["Key"].split("/")[2]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="chaos", Prefix="out/jobs/")
        for obj in page.get("Contents", [])
    )
    report.duplicated_outputs = sum(
        1
        for job_id, images, status, outputs in rows
        if outputs > images or objects[job_id] > images or (status == "succeeded" and outputs != images)
    )
    report.failures = {code or "none": int(n) for code, n in failures}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--db-stops", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    report = run(
        args.jobs, args.workers, args.kills, args.redis_restarts, args.db_stops, args.seed, args.timeout
    )
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
