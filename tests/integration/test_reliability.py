"""No accepted job is lost or run twice when workers, the broker or the database fail.

These tests stop, flush and restart servers, so they run their own private Redis and
PostgreSQL (``bench.servers``), never the shared ones.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from bench.processes import FAST_RECOVERY_SETTINGS, Process, Stack, base_env, install_tiny_model, wait_for
from bench.servers import PrivatePostgres, PrivateRedis, unique_name
from tests.factories import STACK_SETTINGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RELIABILITY_SETTINGS = {**STACK_SETTINGS, **FAST_RECOVERY_SETTINGS, "EASEL_MAX_ATTEMPTS": "3"}
LONG = {"width": 512, "height": 512, "scheduler": "euler", "steps": 40}


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres().start()
    yield server
    server.destroy()


@pytest.fixture
def stack(
    tmp_path: Path,
    tiny_model: Path,
    private_redis: PrivateRedis,
    private_postgres: PrivatePostgres,
    s3: dict[str, str],
) -> Iterator[Stack]:
    name = unique_name("rel")
    admin = create_engine(private_postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    import redis

    redis.Redis.from_url(private_redis.url).flushdb()
    install_tiny_model(tiny_model, tmp_path)
    env = base_env(
        tmp_path,
        **RELIABILITY_SETTINGS,
        EASEL_DATABASE_URL=private_postgres.url.rsplit("/", 1)[0] + f"/{name}",
        EASEL_BROKER_URL=private_redis.url,
        EASEL_STORAGE_URL=f"s3://{s3['bucket']}/{name}",
        EASEL_S3_ENDPOINT_URL=s3["endpoint"],
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    stack = Stack(env=env, workdir=tmp_path)
    stack.migrate()
    yield from stack.running()


def worker_of(stack: Stack, job: dict) -> Process:
    """The stack's worker process that runs ``job`` (worker ids are ``host:pid:token``)."""
    pid = int(job["worker_id"].split(":")[1])
    for process in stack.processes:
        if process.name.startswith("worker") and process.running() and process.popen.pid == pid:
            return process
    raise AssertionError(f"no live worker runs pid {pid}")


def kill9(process: Process) -> None:
    os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=30)


def outputs_in_db(stack: Stack, job_id: str) -> int:
    engine = create_engine(stack.env["EASEL_DATABASE_URL"])
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM job_outputs WHERE job_id = :id"), {"id": job_id}
        ).scalar()
    engine.dispose()
    return int(count)


def test_kill_9_mid_job_completes_on_another_worker(stack: Stack) -> None:
    stack.start_worker("worker-a")
    stack.start_worker("worker-b")
    job = stack.submit(prompt="survivor", num_images=2, seed=5, **LONG)
    running = wait_for(
        lambda: (j := stack.job(job["id"]))["progress"]["step"] >= 2 and j, 60, "the job to run"
    )
    victim = worker_of(stack, running)
    kill9(victim)
    done = stack.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["worker_id"] != running["worker_id"]
    assert [o["seed"] for o in done["outputs"]] == [5, 6]
    assert outputs_in_db(stack, job["id"]) == 2


def test_redis_restarted_empty_while_jobs_are_queued(stack: Stack, private_redis: PrivateRedis) -> None:
    stack.start_worker()
    first = stack.submit(prompt="running", **{**LONG, "steps": 30})
    queued = [stack.submit(prompt=f"queued {i}", steps=3, width=64, height=64) for i in range(5)]
    wait_for(lambda: stack.job(first["id"])["status"] == "running", 60, "the first job to run")
    private_redis.restart_empty()  # every queued wake-up is gone
    for job in (first, *queued):  # the worker finds them in the database: wake-ups are only hints
        assert stack.wait(job["id"], timeout=180)["status"] == "succeeded"


def test_database_stopped_and_started_loses_no_accepted_job(
    stack: Stack, private_postgres: PrivatePostgres
) -> None:
    stack.start_worker()
    accepted: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def submit_forever() -> None:
        i = 0
        while not stop.is_set():
            try:
                response = requests.post(
                    stack.base_url + "/api/v1/jobs",
                    timeout=15,
                    json={"prompt": f"db {i}", "steps": 3, "width": 64, "height": 64},
                )
            except requests.RequestException:
                continue
            statuses.append(response.status_code)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            elif response.status_code == 503:
                assert response.headers["Retry-After"] == "5"
                assert response.json()["error"]["code"] == "database_unavailable"
            i += 1
            time.sleep(0.1)

    thread = threading.Thread(target=submit_forever)
    thread.start()
    try:
        wait_for(lambda: len(accepted) >= 5, 60, "jobs before the outage")
        private_postgres.stop()
        wait_for(lambda: statuses.count(503) >= 3, 60, "503s during the outage")
        private_postgres.start()
        before = len(accepted)
        wait_for(lambda: len(accepted) >= before + 5, 60, "jobs after the outage")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert 500 not in statuses and set(statuses) <= {202, 503}, statuses
    for job_id in accepted:
        assert stack.wait(job_id, timeout=180)["status"] == "succeeded"


def test_sigterm_lets_the_worker_finish_its_job(stack: Stack) -> None:
    worker = stack.start_worker()
    job = stack.submit(prompt="finish me", **LONG)
    behind = stack.submit(prompt="behind", steps=3, width=64, height=64)
    wait_for(lambda: stack.job(job["id"])["progress"]["step"] >= 2, 60, "the job to run")
    worker.popen.send_signal(signal.SIGTERM)  # what docker stop sends to PID 1
    worker.popen.wait(timeout=120)
    assert stack.job(job["id"])["status"] == "succeeded"
    assert stack.job(behind["id"])["status"] == "queued"  # not taken by a stopping worker
    stack.start_worker("worker-2")
    assert stack.wait(behind["id"], timeout=120)["status"] == "succeeded"


def test_a_job_that_always_crashes_its_worker_ends_failed(stack: Stack) -> None:
    job = stack.submit(prompt="poison", **{**LONG, "steps": 150})
    for attempt in range(1, 4):
        worker = stack.start_worker(f"worker-{attempt}")
        running = wait_for(
            lambda n=attempt: (j := stack.job(job["id"]))["status"] == "running" and j["attempts"] == n and j,
            90,
            f"attempt {attempt}",
        )
        assert worker_of(stack, running) is worker
        kill9(worker)
    stack.start_worker("worker-last")
    done = stack.wait(job["id"], timeout=120)
    assert done["status"] == "failed" and done["attempts"] == 3
    assert done["error"]["code"] == "worker_lost" and "EASEL_MAX_ATTEMPTS=3" in done["error"]["message"]
