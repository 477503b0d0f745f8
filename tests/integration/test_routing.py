"""Routing by model through real processes: one queue per model, workers that serve some.

Three tiny models share one prebuilt folder (a registry name is only a name; the
weights are read, never written). One worker serves ``alpha`` (``EASEL_WORKER_MODELS``),
another ``beta`` (``easel worker --models``), and none serves ``gamma``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select

from bench.processes import Process, Stack, base_env, wait_for
from bench.servers import claimed_redis_db, temporary_database
from easel.shared.models import Worker
from easel.shared.queue import queue_name

pytestmark = pytest.mark.slow

MODELS_FILE = """
[models.alpha]
source = "tiny"
location = '{location}'
max_size = 512

[models.beta]
source = "tiny"
location = '{location}'
max_size = 512

[models.gamma]
source = "tiny"
location = '{location}'
max_size = 512
"""
SMALL = {"width": 64, "height": 64, "steps": 2}
HEARTBEAT_SECONDS = 1  # an idle worker also looks at the database at least this often
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Routed:
    stack: Stack
    workers: dict[str, Process]  # model -> the `easel worker` process serving only it

    def models(self) -> dict[str, int]:
        response = self.stack.http.get(self.stack.base_url + "/api/v1/models", timeout=10)
        response.raise_for_status()
        return {m["name"]: m["workers"] for m in response.json()["models"]}

    def worker_rows(self) -> dict[str, list[str]]:
        """The ``workers`` table: worker id (host:pid of the Celery child) -> models it serves."""
        return {row.id: list(row.models) for row in self._workers()}

    def last_beats(self) -> dict[str, datetime]:
        """Worker id -> the time of its last heartbeat."""
        return {row.id: as_utc(row.last_seen_at) for row in self._workers()}

    def _workers(self) -> list[Any]:
        engine = create_engine(self.stack.env["EASEL_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return list(conn.execute(select(Worker.id, Worker.models, Worker.last_seen_at)))
        finally:
            engine.dispose()


def as_utc(moment: datetime | str) -> datetime:
    """An aware UTC datetime of a stored or ISO time (naive means UTC)."""
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, postgres_admin_url: str, redis_server_url: str
) -> Iterator[Routed]:
    home = tmp_path_factory.mktemp("routing")
    (home / "models.toml").write_text(MODELS_FILE.format(location=tiny_model))
    with (
        temporary_database("easel_route", postgres_admin_url) as db_url,
        claimed_redis_db(redis_server_url) as redis_url,
    ):
        env = base_env(
            home,
            EASEL_DATABASE_URL=db_url,
            EASEL_BROKER_URL=redis_url,
            EASEL_MODELS_FILE=str(home / "models.toml"),
            EASEL_DEFAULT_MODEL="alpha",
            EASEL_AUTH_ENABLED="false",  # the job page is opened by a browser below
            EASEL_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
            EASEL_IDLE_POLL_SECONDS=str(HEARTBEAT_SECONDS),
            EASEL_CPU_THREADS="1",
            EASEL_RATE_LIMIT="100000/minute",
            EASEL_SUBMIT_RATE_LIMIT="100000/minute",
        )
        stack = Stack(env=env, workdir=home)
        stack.migrate()
        try:
            stack.start_web()
            workers = {
                "alpha": stack.start_worker("worker-alpha", {"EASEL_WORKER_MODELS": "alpha"}),
                "beta": stack.start_worker("worker-beta", args=("--models", "beta")),
            }
            routed = Routed(stack, workers)
            # Live once each Celery child has written its first heartbeat.
            wait_for(
                lambda: routed.models() == {"alpha": 1, "beta": 1, "gamma": 0},
                60,
                f"one live worker for alpha and one for beta: {stack.logs()}",
            )
            yield routed
        finally:
            stack.stop()


def test_each_model_runs_on_the_worker_that_serves_it(routed: Routed) -> None:
    stack = routed.stack
    submitted = [
        stack.submit(prompt=f"{model} {i}", model=model, **SMALL)
        for i in range(2)
        for model in ("alpha", "beta")
    ]
    assert not any(job["waiting_for_worker"] for job in submitted)
    done = [stack.wait(job["id"]) for job in submitted]
    assert all(job["status"] == "succeeded" for job in done), done

    rows = routed.worker_rows()
    assert sorted(rows.values()) == [["alpha"], ["beta"]], rows
    for job in done:
        # The worker id in the job (host:pid:token) is the process started for that model.
        assert rows[job["worker_id"]] == [job["model"]], (job["worker_id"], rows)
        pid = int(job["worker_id"].split(":")[1])
        assert pid == routed.workers[job["model"]].popen.pid, (job["model"], pid)
    assert len({job["worker_id"] for job in done}) == 2


def test_a_model_no_worker_serves_waits_and_can_be_canceled(routed: Routed) -> None:
    stack = routed.stack
    job = stack.submit(prompt="nobody draws this", model="gamma", **SMALL)
    assert job["status"] == "queued" and job["waiting_for_worker"] is True
    assert job["eta_seconds"] is None and job["queue_position"] == 0

    # Idle workers look at the database every second and beat every second: a beat two
    # intervals after the job was queued follows claims that saw it (had a worker served
    # gamma, it would have run).
    swept_after = as_utc(job["created_at"]) + timedelta(seconds=2 * HEARTBEAT_SECONDS)
    wait_for(
        lambda: len(beats := routed.last_beats()) == 2 and all(t > swept_after for t in beats.values()),
        30,
        f"both workers to sweep after {swept_after}: {routed.last_beats()}",
    )
    still = stack.job(job["id"])
    assert still["status"] == "queued" and still["waiting_for_worker"] is True, still
    assert still["attempts"] == 0 and still["started_at"] is None and still["worker_id"] is None
    assert routed.models() == {"alpha": 1, "beta": 1, "gamma": 0}
    # Its wake-up waits in gamma's queue: each worker consumes only its models' queues.
    broker = redis.Redis.from_url(stack.env["EASEL_BROKER_URL"])
    assert broker.llen(queue_name("gamma")) >= 1
    assert broker.llen(queue_name("alpha")) == 0 and broker.llen(queue_name("beta")) == 0

    response = stack.cancel(job["id"])
    assert response.status_code == 200
    canceled = response.json()
    assert canceled["status"] == "canceled" and canceled["waiting_for_worker"] is False
    assert canceled["started_at"] is None


@pytest.mark.browser
def test_job_page_says_no_worker_serves_the_model(routed: Routed) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is needed at {CHROMIUM}: apt-get install chromium")
    stack = routed.stack
    waiting = stack.submit(prompt="nobody draws this either", model="gamma", **SMALL)
    served = stack.wait(stack.submit(prompt="drawn", model="beta", **SMALL)["id"])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page: Any = browser.new_page(base_url=stack.base_url)
                page.goto(f"/jobs/{waiting['id']}")
                notice = page.locator("#waiting")
                notice.wait_for(state="visible", timeout=20_000)
                assert notice.inner_text() == (
                    "No worker serving model gamma is running; the job waits until one starts."
                )
                assert page.locator("#status").inner_text() == "queued"
                assert page.locator("#eta").inner_text() == ""  # no estimate while it waits
                page.goto(f"/jobs/{served['id']}")
                page.wait_for_function(
                    "() => document.querySelector('#status').dataset.status === 'succeeded'"
                )
                assert page.locator("#waiting").is_hidden()
            finally:
                browser.close()
    finally:
        stack.cancel(waiting["id"])
