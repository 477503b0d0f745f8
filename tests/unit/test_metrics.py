"""Prometheus series: a worker's own, and the web tier's without an API key.

The web tier's counts read from SQLite and PostgreSQL are in
``tests/integration/test_web_metrics.py``.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from bench.processes import free_port
from easel.migrations.upgrade import upgrade
from easel.shared.models import JobStatus
from easel.shared.settings import Settings
from easel.web import create_app
from easel.worker import metrics as wm
from tests.factories import parse_metrics, value


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


def test_a_finished_job_is_observed_with_the_timings_the_runner_recorded() -> None:
    wm.observe_job_finished(
        "w-c", "inpaint", JobStatus.SUCCEEDED.value, {"queue_seconds": 3.0, "run_seconds": 0.6}
    )
    assert sample("easel_worker_jobs_finished_total", status="succeeded", type="inpaint", model="w-c") == 1
    assert sample("easel_worker_queue_wait_seconds_sum", model="w-c") == pytest.approx(3.0)
    assert 0.6 <= sample("easel_worker_run_seconds_sum", model="w-c") < 30


def test_worker_server_serves_the_registry_once() -> None:
    port = free_port()
    wm.start_server(port, addr="127.0.0.1")
    wm.start_server(port, addr="127.0.0.1")  # idempotent: no second bind
    wm.observe_model_load("w-d", 0.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        s = parse_metrics(response.read().decode())
    assert value(s, "easel_worker_model_loads_total", model="w-d") == 1
    assert value(s, "process_resident_memory_bytes") is not None
