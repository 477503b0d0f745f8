"""``kill -9`` of the worker process at any moment never stalls the queue.

On the embedded stack ``easel run`` restarts the worker that died (and says so); on
PostgreSQL + Redis + S3 the test starts a new worker, as a container's restart policy
would. Either way the new worker marks its dead predecessor on this host stopped,
recovers its running jobs under the attempt limit, and runs every queued job: each
job succeeds once, with its outputs, within two attempts.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.processes import (
    FAST_RECOVERY_SETTINGS,
    Process,
    Stack,
    base_env,
    easel,
    install_tiny_model,
    wait_for,
)
from tests.factories import STACK_SETTINGS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CRASH_SETTINGS = {
    **STACK_SETTINGS,
    **FAST_RECOVERY_SETTINGS,
    "EASEL_RESTART_BACKOFF_SECONDS": "0.2",
    "EASEL_MAX_BATCH_SIZE": "2",
}
SMALL = {"width": 64, "height": 64, "steps": 3}
SLOW = {"width": 128, "height": 128, "steps": 40}


def kill_worker(stack: Stack) -> int:
    """SIGKILL the worker process that beats now; reap it if it is ours."""
    pid = int(wait_for(stack.live_worker_pid, 120, "a live worker"))
    os.kill(pid, signal.SIGKILL)
    for process in stack.processes:
        if process.popen.pid == pid:
            process.popen.wait(timeout=30)
    return pid


def submit(stack: Stack, count: int, **fields: Any) -> list[str]:
    return [stack.submit(prompt=f"crash {i}", seed=i, **fields)["id"] for i in range(count)]


def each_ran_once(stack: Stack, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = stack.wait(job_id, timeout=240)
        assert job["status"] == "succeeded", job
        assert 1 <= job["attempts"] <= 2, job
        assert [o["index"] for o in job["outputs"]] == [0], job


def running(stack: Stack, job_ids: list[str]) -> bool:
    return any(stack.job(job_id)["progress"]["step"] >= 1 for job_id in job_ids)


def some_finished_some_not(stack: Stack, job_ids: list[str]) -> bool:
    statuses = {stack.job(job_id)["status"] for job_id in job_ids}
    return "succeeded" in statuses and bool(statuses & {"queued", "running"})


# moment -> (jobs to submit, fields, when to kill: a condition on the stack and the job ids)
Moment = tuple[int, dict[str, Any], Callable[[Stack, list[str]], Any]]
MOMENTS: dict[str, Moment] = {
    "just_after_submits": (4, SMALL, lambda stack, ids: True),
    "during_a_batch": (3, SLOW, running),
    "between_batches": (8, {**SMALL, "steps": 12}, some_finished_some_not),
}


def crash_and_recover(stack: Stack, moment: str, restart: Callable[[], Any]) -> None:
    count, fields, ready = MOMENTS[moment]
    job_ids = submit(stack, count, **fields)
    wait_for(lambda: ready(stack, job_ids), 120, f"the moment {moment}")
    kill_worker(stack)
    restart()
    each_ran_once(stack, job_ids)


# ---- embedded stack: easel run restarts the worker -------------------------------------


@pytest.fixture(scope="module")
def easel_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Stack, Process]]:
    home = tmp_path_factory.mktemp("crash-embedded")
    install_tiny_model(tiny_model, home)
    stack = Stack(env=base_env(home, **CRASH_SETTINGS), workdir=home)
    run = stack.start("run", easel("run"), {"EASEL_PORT": str(stack.port), "EASEL_WEB_WORKERS": "1"})
    wait_for(lambda: requests.get(stack.base_url + "/readyz", timeout=2).ok, 120, "easel run's web")
    stack.env["EASEL_DATABASE_URL"] = f"sqlite:///{home / 'easel.db'}"
    try:
        yield stack, run
    finally:
        stack.stop()


@pytest.mark.parametrize("moment", [*MOMENTS, "during_model_load"])
def test_easel_run_restarts_a_killed_worker_and_every_job_runs(
    easel_run: tuple[Stack, Process], moment: str
) -> None:
    stack, run = easel_run
    restarts = run.log().count("restarting it")
    if moment == "during_model_load":
        # The worker loads the default model before its first claim: kill it while it does.
        kill_worker(stack)
        wait_for(lambda: run.log().count("restarting it") > restarts, 30, "the restart")
        restarts += 1
        job_ids = submit(stack, 2, **SMALL)
        kill_worker(stack)  # the restarted worker, again loading its model
    else:
        count, fields, ready = MOMENTS[moment]
        job_ids = submit(stack, count, **fields)
        wait_for(lambda: ready(stack, job_ids), 120, f"the moment {moment}")
        kill_worker(stack)
    wait_for(lambda: run.log().count("restarting it") > restarts, 30, "easel run to restart the worker")
    each_ran_once(stack, job_ids)
    assert "exited with code -9" in run.log()


# ---- PostgreSQL + Redis + S3: a new worker takes over ----------------------------------


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, service_env: dict[str, str]
) -> Iterator[Stack]:
    from bench.servers import temporary_database

    home = tmp_path_factory.mktemp("crash-services")
    install_tiny_model(tiny_model, home)
    from bench.servers import claimed_redis_db

    with temporary_database("easel_crash") as url, claimed_redis_db() as broker:
        env = {**service_env, "EASEL_DATABASE_URL": url, "EASEL_BROKER_URL": broker}
        stack = Stack(env=base_env(home, **CRASH_SETTINGS, **env), workdir=home)
        stack.migrate()
        yield from stack.running()


@pytest.mark.parametrize("moment", [*MOMENTS, "during_model_load"])
def test_a_new_worker_recovers_a_killed_ones_jobs_on_redis(services: Stack, moment: str) -> None:
    stack = services
    for process in stack.processes:
        if process.name.startswith("worker"):
            process.stop()  # each moment starts from one fresh worker, or none
    number = len(stack.processes)
    if moment == "during_model_load":
        job_ids = submit(stack, 2, **SMALL)
        stack.start(f"worker-{number}", easel("worker"))  # not waiting for ready: it is loading
        kill_worker(stack)
        stack.start_worker(f"worker-{number}-again")
        each_ran_once(stack, job_ids)
        return
    stack.start_worker(f"worker-{number}")
    crash_and_recover(stack, moment, lambda: stack.start_worker(f"worker-{number}-after"))
