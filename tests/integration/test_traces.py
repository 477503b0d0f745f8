"""A job's trace across real processes (issue 32, item 4): ``easel web``, ``easel worker``
and ``easel webhooks`` export their spans over OTLP/HTTP to a stand-in collector on
loopback (tests/otlp_receiver.py), and the worker's and the sender's spans join the
web's submit span through the ``traceparent`` kept on the job row. Without
``EASEL_OTLP_ENDPOINT`` nothing is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.processes import Stack, wait_for
from tests.factories import make_stack
from tests.otlp_receiver import OtlpReceiver
from tests.webhook_receiver import Receiver

WORKER_SPANS = ("easel.queue_wait", "easel.claim", "easel.pipeline", "easel.store")


@pytest.fixture
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def stack(tmp_path: Path, tiny_model: Path, collector: OtlpReceiver) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path / "stack",
        tiny_model,
        {
            "EASEL_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's batch export delay (ms): spans arrive soon
            "EASEL_WEBHOOK_ALLOW_PRIVATE": "true",
        },
    )
    stack.web_workers = 1
    stack.create_key("traces")
    yield from stack.running(worker=True, webhooks=True)


def test_a_jobs_spans_from_web_worker_and_sender_share_one_trace(
    stack: Stack, collector: OtlpReceiver
) -> None:
    hook = Receiver().start()
    try:
        job = stack.submit(prompt="traced", width=64, height=64, steps=2, webhook_url=hook.url + "/t")
        assert stack.wait(job["id"], timeout=120)["status"] == "succeeded"
        wanted = ("easel.submit", *WORKER_SPANS, "easel.webhook")
        wait_for(lambda: all(collector.named(name) for name in wanted), 60, "every span of the job")
    finally:
        hook.stop()
    (submit,) = [s for s in collector.named("easel.submit") if s.attributes.get("easel.job_id") == job["id"]]
    assert submit.service == "easel-web" and submit.parent_id == ""  # the trace's root
    assert submit.attributes["easel.model"] == job["model"]
    for name in WORKER_SPANS:
        (span,) = [s for s in collector.named(name) if s.trace_id == submit.trace_id]
        assert span.service == "easel-worker" and span.parent_id == submit.span_id, name
        assert span.end_ns >= span.start_ns >= submit.start_ns - 5_000_000_000, name
    (webhook,) = [s for s in collector.named("easel.webhook") if s.trace_id == submit.trace_id]
    assert webhook.service == "easel-webhooks" and webhook.attributes["easel.delivered"] is True
    (pipeline,) = [s for s in collector.named("easel.pipeline") if s.trace_id == submit.trace_id]
    assert pipeline.attributes["easel.batch_jobs"] == 1
