"""shared/tracing.py with the SDK's in-memory exporter: the submit span's traceparent, the
worker's spans recorded under it afterwards, and nothing at all when tracing is off."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from easel.shared import tracing


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("easel"))
    return exporter


def test_spans_recorded_later_join_the_submit_spans_trace(exported: InMemorySpanExporter) -> None:
    with tracing.span("easel.submit", {"easel.model": "tiny-sd"}):
        parent = tracing.current_traceparent()
        tracing.annotate({"easel.job_id": "j1"})
    assert parent is not None and parent.startswith("00-")
    ended = time.time_ns()
    tracing.record("easel.pipeline", parent, ended - 2_000_000, ended, {"easel.batch_jobs": 3})
    submit, pipeline = exported.get_finished_spans()
    assert submit.name == "easel.submit" and submit.attributes == {
        "easel.model": "tiny-sd",
        "easel.job_id": "j1",
    }
    assert pipeline.context.trace_id == submit.context.trace_id
    assert pipeline.parent is not None and pipeline.parent.span_id == submit.context.span_id
    assert pipeline.end_time is not None and pipeline.end_time - pipeline.start_time == 2_000_000


def test_an_untraced_job_records_nothing(exported: InMemorySpanExporter) -> None:
    tracing.record("easel.store", None, 1, 2)
    tracing.record("easel.store", "not a traceparent", 1, 2)  # never raises, starts no trace
    assert exported.get_finished_spans() == ()


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.setup_tracing("easel-web", "") is False
    assert tracing.current_traceparent() is None  # the API's no-op tracer: no context to keep
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
