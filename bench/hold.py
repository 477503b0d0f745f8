"""Held calls against a busy worker: does a web process still answer its probes?

    python -m bench.hold --holds 16,100,1000 --classes gthread,gevent

For each gunicorn worker class (``EASEL_WEB_WORKER_CLASS``) a stack runs on PostgreSQL
and Redis (``EASEL_WEB_WORKERS=2``) with one worker drawing tiny-sd jobs. For each K in
``--holds``, K held calls are opened over raw connections, round-robin over the four
kinds (``Prefer: wait`` submits, OpenAI ``/v1/images/generations``, AUTOMATIC1111
``/sdapi/v1/txt2img``, job event streams) and four holder keys; every fourth client hangs
up after a second, the others stay. Meanwhile, for ``--probe-seconds``, a probe polls
``/healthz`` and another tenant polls its own job, each every 50 ms with a 5 s timeout.

Prints one JSON object: per class and K, the probes' p50/p99 latency in milliseconds
(answered requests) and errors (timeouts and non-200 answers), and how many calls were
held when the probing ended (rows of ``held_calls``; gthread keeps no more than its
threads). Then the per-key bound: with ``EASEL_MAX_HELD_CALLS_PER_KEY=--key-bound`` one
key opens that many event streams and one more OpenAI call, which must answer 429
(``cap_answer``: the status, or the error when none came). The clients share the machine
with the server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from sqlalchemy import create_engine, text

from bench._stack import (
    NO_LIMITS,
    add_stack_arguments,
    bench_parser,
    build_tiny_model,
    easel_stack,
    emit,
    exit_cleanly_on_sigterm,
    percentile,
    progress,
    services,
)
from bench.processes import Stack, wait_for

PROBE_EVERY = 0.05
PROBE_TIMEOUT = 5.0
HOLDERS = 4
HELD_MODEL = "demo-shapes"  # no worker serves it here: the held calls stay held
JOB = {"prompt": "held", "width": 64, "height": 64, "steps": 2, "model": HELD_MODEL}
A1111 = {**JOB, "override_settings": {"sd_model_checkpoint": HELD_MODEL}}
OPENAI = {"prompt": "held", "size": "64x64", "steps": 2, "model": HELD_MODEL}
BUSY = {"prompt": "busy", "width": 128, "height": 128, "steps": 20, "model": "tiny-sd"}
BUSY_JOBS = 400


def open_held(stack: Stack, key: str, kind: str, stream_job: str) -> socket.socket:
    """A raw connection that sent one held call of ``kind`` (its answer is never read)."""
    method, path, body = {
        "wait": ("POST", "/api/v1/jobs", JOB),
        "openai": ("POST", "/v1/images/generations", OPENAI),
        "a1111": ("POST", "/sdapi/v1/txt2img", {k: v for k, v in A1111.items() if k != "model"}),
        "stream": ("GET", f"/api/v1/jobs/{stream_job}/events", None),
    }[kind]
    return held_request(stack, key, method, path, body)


def held_request(
    stack: Stack, key: str, method: str, path: str, body: dict[str, Any] | None
) -> socket.socket:
    """A raw connection that sent ``method path`` with ``Prefer: wait`` (its answer, or
    stream, is never read: the call stays held until the connection closes)."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Prefer: wait=60\r\nAccept: text/event-stream, application/json\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock


class Probe(threading.Thread):
    """GETs ``url`` every ``PROBE_EVERY`` seconds until stopped: latencies and errors."""

    def __init__(self, url: str, key: str | None) -> None:
        super().__init__(daemon=True)
        self.url, self.latencies, self.errors = url, [], 0
        self.stop = threading.Event()
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    latencies: list[float]

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                ok = self.session.get(self.url, timeout=PROBE_TIMEOUT).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                self.latencies.append((time.monotonic() - started) * 1000)
            else:
                self.errors += 1
            self.stop.wait(PROBE_EVERY)

    def figures(self) -> dict[str, Any]:
        p50, p99 = percentile(self.latencies, 50), percentile(self.latencies, 99)
        return {
            "answered": len(self.latencies),
            "p50_ms": round(p50, 1) if p50 is not None else None,
            "p99_ms": round(p99, 1) if p99 is not None else None,
            "errors": self.errors,
        }


def held_count(stack: Stack, job_id: str | None = None) -> int:
    """Rows of ``held_calls`` (of calls on ``job_id``, if given)."""
    engine = create_engine(stack.env["EASEL_DATABASE_URL"])
    where = " WHERE job_id = :job" if job_id else ""
    try:
        with engine.connect() as conn:
            count = conn.execute(text(f"SELECT count(*) FROM held_calls{where}"), {"job": job_id})
            return int(count.scalar_one())
    finally:
        engine.dispose()


def submit(stack: Stack, key: str, job: dict[str, Any] = JOB) -> str:
    response = requests.post(
        f"{stack.base_url}/api/v1/jobs", json=job, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


@contextmanager
def held_calls(stack: Stack, holders: list[str], streams: list[str], count: int) -> Iterator[None]:
    """``count`` held calls open while the block runs; every fourth client hangs up after 1 s."""
    kinds = ("wait", "openai", "a1111", "stream")
    sockets: list[socket.socket] = []
    leaving: list[socket.socket] = []
    try:
        for n in range(count):
            holder = n % HOLDERS
            sock = open_held(stack, holders[holder], kinds[(n // HOLDERS) % 4], streams[holder])
            (leaving if n % 4 == 3 else sockets).append(sock)
        time.sleep(1.0)
        for sock in leaving:
            sock.close()
        yield
    finally:
        for sock in sockets + leaving:
            sock.close()


def one_class(found: Any, worker_class: str, counts: list[int], args: Any, model: Any) -> dict[str, Any]:
    settings = {
        **NO_LIMITS,
        "EASEL_WEB_WORKER_CLASS": worker_class,
        "EASEL_MAX_HELD_CALLS_PER_KEY": str(args.key_bound),
        "EASEL_SYNC_TIMEOUT_SECONDS": "600",
        "EASEL_CPU_THREADS": "1",
    }
    out: dict[str, Any] = {}
    with easel_stack(found, settings, model, keep=args.keep) as stack:
        stack.start_web()
        stack.start_worker(args=("--models", "tiny-sd"))  # busy with tiny-sd; the held calls wait
        busy = stack.create_key("busy")
        for _ in range(BUSY_JOBS):
            submit(stack, busy, BUSY)
        holders = [stack.create_key(f"holder-{n}") for n in range(HOLDERS)]
        tenant = stack.create_key("tenant")
        streams = [submit(stack, key) for key in holders]
        theirs = submit(stack, tenant)
        for count in counts:
            progress(f"{worker_class}: {count} held calls")
            with held_calls(stack, holders, streams, count):
                staying = count - count // 4
                opened = time.monotonic()
                try:  # gthread never holds more calls than its threads: probe after a minute anyway
                    wait_for(lambda n=staying: held_count(stack) >= n, 60, f"{staying} held calls")
                except TimeoutError:
                    progress(f"{held_count(stack)} of {staying} calls held after 60 s; probing now")
                opening = round(time.monotonic() - opened, 1)
                probes = [
                    Probe(f"{stack.base_url}/healthz", None),
                    Probe(f"{stack.base_url}/api/v1/jobs/{theirs}", tenant),
                ]
                for probe in probes:
                    probe.start()
                time.sleep(args.probe_seconds)  # the measuring window
                for probe in probes:
                    probe.stop.set()
                for probe in probes:
                    probe.join()
                held = held_count(stack)
            figures = {
                "healthz": probes[0].figures(),
                "tenant_poll": probes[1].figures(),
                "held": held,
                "opening_seconds": opening,
            }
            out[str(count)] = figures
            progress(f"{worker_class} K={count}: {json.dumps(figures)}")
            try:
                wait_for(lambda: held_count(stack) == 0, 120, "every held call to end")
            except TimeoutError:
                progress("held calls still open after 120 s; going on")
        out["cap_answer"] = cap_answer(stack, args.key_bound)
    return out


def cap_answer(stack: Stack, bound: int) -> int | str:
    """One key opens ``bound`` streams, then an OpenAI call: its status (429 expected)."""
    key = stack.create_key("capped")
    job = submit(stack, key)
    sockets = [open_held(stack, key, "stream", job) for _ in range(bound)]
    try:
        wait_for(lambda: held_count(stack, job) >= bound, 60, "the key's streams")
        response = requests.post(
            f"{stack.base_url}/v1/images/generations",
            json={"prompt": "one too many", "size": "64x64"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=PROBE_TIMEOUT,
        )
        return response.status_code
    except (requests.RequestException, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("python -m bench.hold", __doc__)
    parser.add_argument("--holds", default="16,100,1000", help="comma-separated K")
    parser.add_argument("--classes", default="gthread,gevent", help="EASEL_WEB_WORKER_CLASS values")
    parser.add_argument("--probe-seconds", type=float, default=15.0)
    parser.add_argument("--key-bound", type=int, default=300, help="EASEL_MAX_HELD_CALLS_PER_KEY")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    counts = [int(k) for k in args.holds.split(",")]
    if max(counts) > HOLDERS * args.key_bound:
        parser.error(f"--holds past {HOLDERS} holders x --key-bound")
    import tempfile
    from pathlib import Path

    model = build_tiny_model(Path(tempfile.gettempdir()) / "easel-bench-models")
    figures: dict[str, Any] = {"holds": counts, "probe_seconds": args.probe_seconds}
    with services(private=args.private_servers, s3=False, embedded=args.embedded) as found:
        for worker_class in args.classes.split(","):
            figures[worker_class] = one_class(found, worker_class, counts, args, model)
    emit(figures)


if __name__ == "__main__":
    main()
