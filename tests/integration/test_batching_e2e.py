"""Cross-job batching through real web and worker processes on PostgreSQL, Redis and S3."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.processes import Stack
from tests.factories import make_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

COMMON = {"width": 64, "height": 64, "steps": 4, "scheduler": "euler_a", "guidance_scale": 5.0}
JOBS = [
    {"prompt": "a red fox", "seed": 11},
    {"prompt": "a blue lake", "seed": 12, "negative_prompt": "fog"},
    {"prompt": "a green hill", "seed": 13, "num_images": 2},
]


@pytest.fixture
def stack(
    tmp_path: Path,
    tiny_model: Path,
    fresh_postgres_url: str,
    own_redis_url: str,
    s3: dict[str, str],
    service_env: dict[str, str],
) -> Iterator[Stack]:
    """web on its own database and Redis database, so no other stack's worker takes its jobs."""
    env = {
        **service_env,
        "EASEL_DATABASE_URL": fresh_postgres_url,
        "EASEL_BROKER_URL": own_redis_url,
        "EASEL_STORAGE_URL": f"s3://{s3['bucket']}/{tmp_path.name}",
        "EASEL_AUTH_ENABLED": "false",
        "EASEL_MAX_BATCH_SIZE": "4",
    }
    stack = make_stack(tmp_path, tiny_model, env)
    try:
        stack.start_web()
        yield stack
    finally:
        stack.stop()


def pixels(stack: Stack, job: dict) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(stack.download(out["url"]).content))).astype(int)
        for out in job["outputs"]
    ]


def test_jobs_queued_together_run_as_one_batch_with_the_pixels_they_get_alone(stack: Stack) -> None:
    batched_ids = [stack.submit(**COMMON, **fields)["id"] for fields in JOBS]
    other = stack.submit(**{**COMMON, "width": 72}, prompt="another size")["id"]
    stack.start_worker()  # all five are queued before any worker runs
    batched = [stack.wait(job_id) for job_id in batched_ids]
    assert [job["status"] for job in batched] == ["succeeded"] * 3, batched
    assert len({job["batch_id"] for job in batched}) == 1 and batched[0]["batch_id"]
    assert {job["batch_size"] for job in batched} == {4}  # 1 + 1 + 2 images in one call
    assert all(job["timings"]["batch_jobs"] == 3 for job in batched)
    alone_key = stack.wait(other)
    assert alone_key["batch_id"] not in {job["batch_id"] for job in batched}
    assert alone_key["batch_size"] == 1  # another batch key never shares the call

    for fields, job in zip(JOBS, batched, strict=True):
        single = stack.wait(stack.submit(**COMMON, **fields)["id"])  # queued alone, runs alone
        assert single["batch_size"] == fields.get("num_images", 1)
        assert [o["seed"] for o in single["outputs"]] == [o["seed"] for o in job["outputs"]]
        for a, b in zip(pixels(stack, job), pixels(stack, single), strict=True):
            assert np.abs(a - b).max() <= 1  # equal within quantization
    lines = stack.worker_log().splitlines()
    for job in batched:  # each job's log lines carry the batch id
        assert any(job["id"] in line and job["batch_id"] in line for line in lines), job["id"]
