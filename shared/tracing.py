"""OpenTelemetry traces of a job's life, exported over OTLP when ``EASEL_OTLP_ENDPOINT``
is set, off (the API's no-op tracer, nothing recorded) otherwise.

One trace per job: the web's ``easel.submit`` span is its root, and its W3C
``traceparent`` is kept on the job row (``jobs.trace_parent``), so the spans of other
processes join it as the root's children: the worker's ``easel.queue_wait`` (from the
submit to the claim), ``easel.claim``, ``easel.pipeline`` (the call, with its batch's id
and size: one span per job of the batch) and ``easel.store``, and the webhook sender's
``easel.webhook``. The worker's spans are recorded when each part has ended, with its
measured start and end, so tracing adds nothing to the pipeline's path.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
TRACER_NAME = "easel"
_propagator = TraceContextTextMapPropagator()


def setup_tracing(service: str, endpoint: str | None) -> bool:
    """Export this process's spans to the OTLP/HTTP collector at ``endpoint`` (e.g.
    ``http://otel-collector:4318``) as ``service``; nothing without an endpoint. Whether
    tracing is on. Call once per process, after any fork (the exporter has a thread)."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    trace.set_tracer_provider(provider)
    log.info("tracing to %s as %s", traces_url(endpoint), service)
    return True


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base ``endpoint``."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A live span around the block (the web's submit), current inside it."""
    with tracer().start_as_current_span(name, attributes=dict(attributes or {})) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or ``None`` when nothing is traced."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def record(
    name: str,
    traceparent: str | None,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """A finished span ``name`` from ``start_ns`` to ``end_ns`` (``time.time_ns``) in the
    trace of ``traceparent`` (a job's); nothing for a job that was not traced. Never raises."""
    if not traceparent:
        return
    try:
        context = _propagator.extract({"traceparent": traceparent})
        if not trace.get_current_span(context).get_span_context().is_valid:
            return  # not a traceparent: no trace to join
        attrs = dict(attributes or {})
        done = tracer().start_span(name, context=context, start_time=start_ns, attributes=attrs)
        done.end(end_time=max(end_ns, start_ns))
    except Exception:  # tracing must never fail a job
        log.warning("could not record span %s", name, exc_info=True)


def seconds_ago_ns(seconds: float) -> int:
    """``time.time_ns()`` of ``seconds`` ago: the start of a part measured with a clock
    that is not wall time (``perf_counter``)."""
    return time.time_ns() - int(seconds * 1e9)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` on the current span (a no-op when nothing is traced)."""
    trace.get_current_span().set_attributes(dict(attributes))


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function inside a live span ``name``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with span(name):
                return fn(*args, **kwargs)

        return inner

    return wrap
