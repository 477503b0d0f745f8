"""Prometheus metrics through real processes: web's /metrics (from the database) and a
worker's own endpoint on ``EASEL_METRICS_PORT``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.processes import Stack, free_port, wait_for
from tests.factories import Samples, make_stack, parse_metrics, value

pytestmark = pytest.mark.slow

MODEL = "tiny-sd"


@pytest.fixture
def metrics_stack(
    tmp_path: Path,
    tiny_model: Path,
    service_env: dict[str, str],
    fresh_postgres_url: str,
    own_redis_url: str,
) -> Iterator[tuple[Stack, int]]:
    """web + one worker serving metrics on the port given, on a database and broker of
    this test alone (so the counts are exact)."""
    env = {
        **service_env,
        "EASEL_DATABASE_URL": fresh_postgres_url,
        "EASEL_BROKER_URL": own_redis_url,
        "EASEL_STORAGE_URL": service_env["EASEL_STORAGE_URL"] + "-metrics",
    }
    stack = make_stack(tmp_path / "home", tiny_model, env)
    stack.create_key("metrics")
    port = free_port()
    try:
        stack.start_web()
        stack.start_worker(extra_env={"EASEL_METRICS_PORT": str(port)})
        yield stack, port
    finally:
        stack.stop()


def scrape(url: str) -> Samples:
    response = requests.get(url, timeout=10)  # no API key: /metrics is public like /healthz
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)


def test_web_and_worker_metrics_after_two_successes_and_a_cancel(metrics_stack: tuple[Stack, int]) -> None:
    stack, metrics_port = metrics_stack
    done = [stack.wait(stack.submit(prompt=f"ok {i}", width=64, height=64, steps=2)["id"]) for i in range(2)]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]
    long = stack.submit(prompt="long", width=256, height=256, steps=150)
    wait_for(lambda: stack.job(long["id"])["progress"]["step"] >= 2, 60, "the long job to start")
    assert stack.cancel(long["id"]).status_code == 200
    assert stack.wait(long["id"])["status"] == "canceled"

    web = scrape(stack.base_url + "/metrics")
    submitted = sum(v for (name, labels), v in web.items() if name == "easel_jobs_submitted_total")
    assert submitted >= 3
    finished = "easel_jobs_finished_total"
    assert value(web, finished, status="succeeded", type="txt2img", model=MODEL) == 2
    assert value(web, finished, status="canceled", type="txt2img", model=MODEL) == 1
    assert value(web, "easel_queue_depth", model=MODEL) == 0
    assert value(web, "easel_jobs", status="running", model=MODEL) == 0
    assert value(web, "easel_workers", model=MODEL) == 1
    assert value(web, "easel_job_run_seconds_count", model=MODEL) == 3
    assert value(web, "easel_job_queue_wait_seconds_count", model=MODEL) == 3
    assert 0 < value(web, "easel_job_run_seconds_sum", model=MODEL) < 120

    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
    jobs = "easel_worker_jobs_finished_total"
    # the worker counts a job just after recording it, so the API may see it a moment sooner
    worker = wait_for(
        lambda: (
            (s := scrape(worker_url))
            and value(s, jobs, status="canceled", type="txt2img", model=MODEL) == 1
            and s
        ),
        10,
        "the worker to count the canceled job",
    )
    assert value(worker, jobs, status="succeeded", type="txt2img", model=MODEL) == 2
    assert value(worker, "easel_worker_run_seconds_count", model=MODEL) >= 2
    assert value(worker, "easel_worker_queue_wait_seconds_count", model=MODEL) == 3
    assert value(worker, "process_resident_memory_bytes") > 0
    # observed by the runner (on_batch) and the pipeline cache (observe_model_load, set_models_loaded)
    assert value(worker, "easel_worker_batch_size_count", model=MODEL) >= 1
    assert value(worker, "easel_worker_batch_jobs_count", model=MODEL) >= 1
    assert value(worker, "easel_worker_model_loads_total", model=MODEL) == 1
    assert value(worker, "easel_worker_models_loaded") == 1
