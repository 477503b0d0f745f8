"""API load: concurrent clients submitting jobs and polling them, against real web.

    python -m bench.api --clients 16 --duration 30 --web-workers 2

``--clients`` threads, each with its own ``requests.Session``, run against real
``easel web`` (gunicorn as ``easel web`` runs it, ``EASEL_WEB_WORKERS=--web-workers``)
on PostgreSQL and Redis. Each client loops: POST a job to ``/api/v1/jobs``, then
GET one of its recent jobs ``--polls-per-submit`` times, one request per ``--interval``
seconds (4 a second by default, like an eager client; ``--interval 0`` sends the next
request as soon as an answer comes, which measures the most requests/s the server
answers, with latency that is then mostly queueing). No worker runs, so jobs just
queue (and the queue grows during the run, as does the work of each job's queue
position and ETA). Authentication is on, with one key made by ``easel keys create``
(``--no-auth`` turns it off); the rate limits and the queued-jobs cap are set out of
reach. The first ``--warmup`` seconds are not counted.

Prints one JSON object: requests/s, and per kind (submit, poll) the count, requests/s,
latency p50/p95/p99/mean/max in milliseconds (successful requests) and errors by
status code or exception, and ``web_cpu_ms_per_request``: the CPU time of the web's
processes (gunicorn and its workers) over the measured seconds, per request (with
``--polls-per-submit 0``, what one submit costs the web tier); progress goes to stderr.
The clients share the machine with the server: on a small machine their own CPU use
lowers the figures.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import requests

from bench._stack import (
    NO_LIMITS,
    add_stack_arguments,
    bench_parser,
    easel_stack,
    emit,
    exit_cleanly_on_sigterm,
    percentile,
    progress,
    rate,
    services,
    totals,
)

KINDS = ("submit", "poll")


@dataclass
class Samples:
    """One client's requests: (kind, start offset in seconds, latency in seconds) of the
    successes, and the errors by kind."""

    ok: list[tuple[str, float, float]] = field(default_factory=list)
    errors: list[tuple[str, float, str]] = field(default_factory=list)


def client(
    index: int,
    base_url: str,
    headers: dict[str, str],
    t0: float,
    end: float,
    polls_per_submit: int,
    samples: Samples,
    interval: float = 0.0,
) -> None:
    """Submit, then poll recent jobs, until ``end`` (``time.perf_counter`` clock); with
    ``interval``, one request per ``interval`` seconds at most (a paced client)."""
    rng = random.Random(index)
    ids: list[str] = []
    next_at = time.perf_counter() + rng.uniform(0, interval)  # clients do not start in step

    def pace() -> None:
        nonlocal next_at
        if interval > 0:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            next_at = max(next_at + interval, time.perf_counter() - interval)

    with requests.Session() as session:
        session.headers.update(headers)
        n = 0
        while time.perf_counter() < end:
            n += 1
            payload = {
                "prompt": f"client {index} job {n}",
                "width": 256,
                "height": 256,
                "steps": 20,
                "num_images": 1,
                "seed": index * 1_000_000 + n,
            }
            submit = partial(session.post, base_url, json=payload, timeout=30)
            pace()
            job_id = _timed(samples, "submit", t0, submit, 202)
            if job_id:
                ids.append(job_id)
            for _ in range(polls_per_submit):
                if not ids or time.perf_counter() >= end:
                    break
                poll = partial(session.get, f"{base_url}/{rng.choice(ids[-10:])}", timeout=30)
                pace()
                _timed(samples, "poll", t0, poll, 200)


def _timed(
    samples: Samples, kind: str, t0: float, call: Callable[[], requests.Response], expected: int
) -> str | None:
    """Time ``call``; record a success or an error. A success's job id, if any."""
    start = time.perf_counter()
    try:
        response = call()
    except requests.RequestException as exc:
        samples.errors.append((kind, start - t0, type(exc).__name__))
        return None
    latency = time.perf_counter() - start
    if response.status_code != expected:
        samples.errors.append((kind, start - t0, str(response.status_code)))
        return None
    samples.ok.append((kind, start - t0, latency))
    return response.json().get("id")


def summarise(all_samples: list[Samples], warmup: float, duration: float) -> dict[str, Any]:
    """Figures of the requests started within [warmup, warmup + duration)."""

    def counted(offset: float) -> bool:
        return warmup <= offset < warmup + duration

    figures: dict[str, Any] = {}
    total = errors_total = 0
    for kind in KINDS:
        latencies = [lat for s in all_samples for k, off, lat in s.ok if k == kind and counted(off)]
        errors = Counter(err for s in all_samples for k, off, err in s.errors if k == kind and counted(off))
        count = len(latencies) + sum(errors.values())
        total += count
        errors_total += sum(errors.values())
        ms = [lat * 1000 for lat in latencies]
        figures[kind] = {
            "requests": count,
            "requests_per_s": rate(count, duration),
            "ok": len(latencies),
            "p50_ms": _round(percentile(ms, 50)),
            "p95_ms": _round(percentile(ms, 95)),
            "p99_ms": _round(percentile(ms, 99)),
            "mean_ms": _round(sum(ms) / len(ms) if ms else None),
            "max_ms": _round(max(ms) if ms else None),
            "errors": dict(errors),
        }
    return {"requests": total, "requests_per_s": rate(total, duration), "errors": errors_total, **figures}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run(
    clients: int = 16,
    duration: float = 30.0,
    warmup: float = 3.0,
    web_workers: int = 2,
    polls_per_submit: int = 4,
    interval: float = 0.25,
    auth: bool = True,
    private: bool = False,
    keep: bool = False,
) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    settings = {**NO_LIMITS, "EASEL_AUTH_ENABLED": "true" if auth else "false"}
    started = time.monotonic()
    with (
        services(private=private, s3=False) as found,
        easel_stack(found, settings, web_workers=web_workers, keep=keep) as stack,
    ):
        headers = {"Authorization": f"Bearer {stack.create_key('bench')}"} if auth else {}
        progress(f"starting web ({web_workers} gunicorn workers)")
        web = stack.start_web()
        progress(f"{clients} clients for {warmup:g}s warm-up + {duration:g}s")
        samples = [Samples() for _ in range(clients)]
        t0 = time.perf_counter()
        end = t0 + warmup + duration
        threads = [
            threading.Thread(
                target=client,
                args=(
                    i,
                    stack.base_url + "/api/v1/jobs",
                    headers,
                    t0,
                    end,
                    polls_per_submit,
                    samples[i],
                    interval,
                ),
                daemon=True,
            )
            for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, t0 + warmup - time.perf_counter()))
        web_cpu_at_warmup = web.cpu_seconds()
        for thread in threads:
            thread.join(timeout=warmup + duration + 60)
        web_cpu = web.cpu_seconds() - web_cpu_at_warmup
        if any(thread.is_alive() for thread in threads):
            raise TimeoutError("some clients did not stop within 60s of the end")
        submitted = sum(1 for s in samples for kind, _, _ in s.ok if kind == "submit")
    figures = summarise(samples, warmup, duration)
    web_ms = round(web_cpu * 1000 / figures["requests"], 2) if figures["requests"] else None
    progress(f"{figures['requests']} requests, {figures['requests_per_s']}/s, {figures['errors']} errors")
    return {
        "benchmark": "api",
        "clients": clients,
        "duration_s": duration,
        "warmup_s": warmup,
        "web_workers": web_workers,
        "polls_per_submit": polls_per_submit,
        "interval_s": interval,
        "auth": auth,
        **figures,
        "web_cpu_ms_per_request": web_ms,
        "jobs_queued_at_end": submitted,
        **totals(started, load_at_start),
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("python -m bench.api", __doc__)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (threads; default 16)")
    parser.add_argument("--duration", type=float, default=30, help="seconds measured (default 30)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds run first and not counted")
    parser.add_argument("--web-workers", type=int, default=2, help="EASEL_WEB_WORKERS (default 2)")
    parser.add_argument("--polls-per-submit", type=int, default=4, help="GETs of a job after each POST")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.25,
        help="seconds between one client's requests (default 0.25: 4 requests/s each); 0: as fast as "
        "answers come (closed loop, the server's most requests/s)",
    )
    parser.add_argument("--no-auth", action="store_true", help="EASEL_AUTH_ENABLED=false (no API key)")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if args.interval < 0:
        parser.error(f"--interval must not be negative, got {args.interval}")
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.web_workers < 1:
        parser.error("--clients, --duration and --web-workers must be positive, --warmup not negative")
    exit_cleanly_on_sigterm()
    emit(
        run(
            args.clients,
            args.duration,
            args.warmup,
            args.web_workers,
            args.polls_per_submit,
            args.interval,
            not args.no_auth,
            args.private_servers,
            args.keep,
        )
    )


if __name__ == "__main__":
    main()
