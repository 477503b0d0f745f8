"""Prometheus series: the web tier's (read from the database at scrape time) and a worker's."""

from __future__ import annotations

import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.models import Job, JobStatus, Worker, utcnow
from easel.shared.settings import Settings
from easel.web import create_app
from easel.worker import metrics as wm
from tests.support import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = (
        request.getfixturevalue("fresh_postgres_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path / 'easel.db'}"
    )
    settings = Settings(home=tmp_path, database_url=url, worker_lost_after_seconds=30)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=utcnow().tzinfo)


def job(
    model: str,
    job_type: str,
    status: JobStatus,
    wait: float | None = None,
    run: float | None = None,
) -> Job:
    """A job row created at ``T0`` that started ``wait`` s later and ran ``run`` s."""
    started = T0 + timedelta(seconds=wait) if wait is not None else None
    finished = None
    if status.is_terminal:
        finished = started + timedelta(seconds=run or 0) if started else T0 + timedelta(seconds=1)
    return Job(
        type=job_type,
        model=model,
        status=status.value,
        prompt="p",
        width=64,
        height=64,
        steps=2,
        guidance_scale=7.5,
        scheduler="ddim",
        seed=1,
        created_at=T0,
        started_at=started,
        finished_at=finished,
    )


def seed_rows(settings: Settings) -> None:
    now = utcnow()
    with session_scope(settings.database_url) as session:
        session.add_all(
            [
                job("tiny-sd", "txt2img", JobStatus.SUCCEEDED, wait=2.0, run=3.0),
                job("tiny-sd", "txt2img", JobStatus.SUCCEEDED, wait=0.3, run=0.4),
                job("tiny-sd", "img2img", JobStatus.FAILED, wait=40.0, run=1.5),
                job("tiny-sd", "txt2img", JobStatus.CANCELED),  # canceled while queued: never started
                job("tiny-sd", "txt2img", JobStatus.QUEUED),
                job("tiny-sd", "inpaint", JobStatus.RUNNING, wait=1.0),
                job("other", "txt2img", JobStatus.QUEUED),
            ]
        )
        common: dict[str, Any] = {"hostname": "h", "started_at": now - timedelta(hours=1)}
        session.add_all(
            [
                Worker(id="h:1", models=[], last_seen_at=now, **common),  # serves every model
                Worker(id="h:2", models=["tiny-sd"], last_seen_at=now, **common),
                Worker(id="h:3", models=["tiny-sd"], last_seen_at=now - timedelta(minutes=5), **common),
                Worker(id="h:4", models=["tiny-sd"], last_seen_at=now, stopped_at=now, **common),
            ]
        )


def test_web_metrics_count_jobs_queues_workers_and_durations(client: FlaskClient, settings: Settings) -> None:
    seed_rows(settings)
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    s = parse(response.get_data(as_text=True))

    submitted = "easel_jobs_submitted_total"
    assert value(s, submitted, type="txt2img", model="tiny-sd") == 4
    assert value(s, submitted, type="img2img", model="tiny-sd") == 1
    assert value(s, submitted, type="inpaint", model="tiny-sd") == 1
    assert value(s, submitted, type="txt2img", model="other") == 1
    assert value(s, submitted, type="img2img", model="other") is None  # only configured models get zeros

    finished = "easel_jobs_finished_total"
    assert value(s, finished, status="succeeded", type="txt2img", model="tiny-sd") == 2
    assert value(s, finished, status="failed", type="img2img", model="tiny-sd") == 1
    assert value(s, finished, status="canceled", type="txt2img", model="tiny-sd") == 1
    assert value(s, finished, status="succeeded", type="inpaint", model="tiny-sd") == 0
    assert sum(v for (name, _), v in s.items() if name == finished) == 4

    assert value(s, "easel_jobs", status="queued", model="tiny-sd") == 1
    assert value(s, "easel_jobs", status="running", model="tiny-sd") == 1
    assert value(s, "easel_jobs", status="queued", model="other") == 1
    assert value(s, "easel_jobs", status="running", model="other") == 0
    assert value(s, "easel_queue_depth", model="tiny-sd") == 1
    assert value(s, "easel_queue_depth", model="other") == 1

    # live: h:1 (every model) and h:2; h:3 is silent, h:4 stopped
    assert value(s, "easel_workers", model="tiny-sd") == 2
    assert value(s, "easel_workers", model="other") == 1

    # the three finished jobs that started (waits 2, 0.3, 40; runs 3, 0.4, 1.5)
    wait = "easel_job_queue_wait_seconds"
    assert value(s, wait + "_count", model="tiny-sd") == 3
    assert value(s, wait + "_sum", model="tiny-sd") == pytest.approx(42.3, abs=1e-3)
    expected_wait = {"0.1": 0, "0.5": 1, "1.0": 1, "2.5": 2, "30.0": 2, "60.0": 3, "+Inf": 3}
    for le, n in expected_wait.items():
        assert value(s, wait + "_bucket", model="tiny-sd", le=le) == n, le
    run = "easel_job_run_seconds"
    assert value(s, run + "_count", model="tiny-sd") == 3
    assert value(s, run + "_sum", model="tiny-sd") == pytest.approx(4.9, abs=1e-3)
    expected_run = {"0.25": 0, "0.5": 1, "1.0": 1, "2.5": 2, "5.0": 3, "+Inf": 3}
    for le, n in expected_run.items():
        assert value(s, run + "_bucket", model="tiny-sd", le=le) == n, le
    assert value(s, run + "_count", model="other") is None  # nothing of it finished


def test_web_metrics_on_an_empty_database(client: FlaskClient) -> None:
    s = parse(client.get("/metrics").get_data(as_text=True))
    assert value(s, "easel_jobs_submitted_total", type="txt2img", model="tiny-sd") == 0
    assert value(s, "easel_queue_depth", model="tiny-sd") == 0
    assert value(s, "easel_workers", model="tiny-sd") == 0


def test_metrics_need_no_api_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.auth_enabled
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    assert client.get("/api/v1/jobs").status_code == 401
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "easel_jobs_submitted_total" in response.get_data(as_text=True)


# -- worker ---------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float | None:
    return wm.REGISTRY.get_sample_value(name, labels)


def test_worker_observes_finished_jobs() -> None:
    wm.observe_job_finished("w-a", "txt2img", "succeeded", {"queue_seconds": 0.2, "run_seconds": 1.7})
    wm.observe_job_finished("w-a", "txt2img", "succeeded", {"run_seconds": 40.0})
    wm.observe_job_finished("w-a", "img2img", "canceled", {})
    wm.observe_job_finished("w-a", "txt2img", "failed", {"run_seconds": "bad"})  # ignored, not raised

    finished = "easel_worker_jobs_finished_total"
    assert sample(finished, status="succeeded", type="txt2img", model="w-a") == 2
    assert sample(finished, status="canceled", type="img2img", model="w-a") == 1
    assert sample(finished, status="failed", type="txt2img", model="w-a") == 1
    assert sample("easel_worker_queue_wait_seconds_count", model="w-a") == 1
    assert sample("easel_worker_queue_wait_seconds_bucket", model="w-a", le="0.5") == 1
    assert sample("easel_worker_run_seconds_count", model="w-a") == 2
    assert sample("easel_worker_run_seconds_sum", model="w-a") == pytest.approx(41.7)
    assert sample("easel_worker_run_seconds_bucket", model="w-a", le="2.5") == 1
    assert sample("easel_worker_run_seconds_bucket", model="w-a", le="60.0") == 2


def test_worker_observes_batches_and_model_loads() -> None:
    wm.observe_batch("w-b", images=4, jobs=2)
    wm.observe_batch("w-b", images=1, jobs=1)
    wm.observe_model_load("w-b", 2.0)
    wm.set_models_loaded(3)

    assert sample("easel_worker_batch_size_count", model="w-b") == 2
    assert sample("easel_worker_batch_size_sum", model="w-b") == 5
    assert sample("easel_worker_batch_size_bucket", model="w-b", le="1.0") == 1
    assert sample("easel_worker_batch_size_bucket", model="w-b", le="4.0") == 2
    assert sample("easel_worker_batch_jobs_sum", model="w-b") == 3
    assert sample("easel_worker_model_loads_total", model="w-b") == 1
    assert sample("easel_worker_model_load_seconds_sum", model="w-b") == 2.0
    assert sample("easel_worker_models_loaded") == 3


def test_notify_records_the_finished_job() -> None:
    from easel.worker.tasks import _notify

    row = Job(type="inpaint", model="w-c")
    _notify(row, JobStatus.SUCCEEDED, {"queue_seconds": 3.0, "run_seconds": 0.6})  # as the runner recorded
    assert sample("easel_worker_jobs_finished_total", status="succeeded", type="inpaint", model="w-c") == 1
    assert sample("easel_worker_queue_wait_seconds_sum", model="w-c") == pytest.approx(3.0)
    assert 0.6 <= sample("easel_worker_run_seconds_sum", model="w-c") < 30


def test_worker_server_serves_the_registry_once() -> None:
    port = free_port()
    wm.start_server(port, addr="127.0.0.1")
    wm.start_server(port, addr="127.0.0.1")  # idempotent: no second bind
    wm.observe_model_load("w-d", 0.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        s = parse(response.read().decode())
    assert value(s, "easel_worker_model_loads_total", model="w-d") == 1
    assert value(s, "process_resident_memory_bytes") is not None
