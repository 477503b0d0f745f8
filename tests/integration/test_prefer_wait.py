"""``Prefer: wait`` on ``POST /api/v1/jobs`` through real web and worker processes."""

from __future__ import annotations

import time

import pytest

from bench.processes import Stack

pytestmark = pytest.mark.slow


def test_prefer_wait_answers_the_finished_job_with_its_outputs(services_stack: Stack) -> None:
    started = time.monotonic()
    response = services_stack.http.post(
        f"{services_stack.base_url}/api/v1/jobs",
        json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "num_images": 2},
        headers={"Prefer": "wait=30"},
        timeout=40,
    )
    assert time.monotonic() - started < 30
    assert response.status_code == 202 and response.headers["Preference-Applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and len(job["outputs"]) == 2
    assert services_stack.download(job["outputs"][0]["url"]).headers["Content-Type"] == "image/png"
