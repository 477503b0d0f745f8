"""What the benchmarks share: the services (PostgreSQL, Redis, S3), real ``easel``
processes on them, job submission and completion, figures and progress lines.

Every run gets its own database, Redis database number and bucket, and removes them
(and its temporary folder, and its processes) when it ends, also on Ctrl-C or SIGTERM.
``private=True`` starts private ``redis-server`` and PostgreSQL servers instead of
using the shared ones (the chaos run stops and restarts them).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.processes import Stack, base_env, install_tiny_model
from bench.servers import (
    S3_CREDENTIALS,
    PrivatePostgres,
    PrivateRedis,
    claimed_redis_db,
    postgres_server,
    redis_server,
    s3_server,
    temporary_database,
)

# Limits that would otherwise refuse a benchmark's bursts (each has its own tests).
NO_LIMITS = {
    "EASEL_RATE_LIMIT": "100000000/minute",
    "EASEL_SUBMIT_RATE_LIMIT": "100000000/minute",
    "EASEL_MAX_QUEUED_PER_KEY": "100000000",
}
TERMINAL = {"succeeded", "failed", "canceled"}

# This process: offline, and quiet (no download bars, no S3 request lines from moto).
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_name, _value)
logging.getLogger("werkzeug").setLevel(logging.ERROR)


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the JSON figures)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(figures: dict[str, Any]) -> None:
    """The one JSON object a benchmark prints."""
    print(json.dumps(figures, indent=2))


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so the ``finally`` blocks stop processes and
    drop databases as they do on Ctrl-C."""

    def raise_exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)


# -- services ----------------------------------------------------------------------------


@dataclass
class Services:
    """Where one run's processes keep their state."""

    database_url: str
    broker_url: str
    s3_endpoint: str | None = None
    bucket: str | None = None
    s3: Any = None  # a boto3 client of the endpoint
    postgres: PrivatePostgres | None = None
    redis: PrivateRedis | None = None

    @property
    def embedded(self) -> bool:
        """No servers: the stack keeps ``make run``'s defaults under its home."""
        return not self.database_url

    def env(self) -> dict[str, str]:
        if self.embedded:
            return {}
        env = {"EASEL_DATABASE_URL": self.database_url, "EASEL_BROKER_URL": self.broker_url}
        if self.s3_endpoint:
            env.update(
                EASEL_STORAGE_URL=f"s3://{self.bucket}/out",
                EASEL_S3_ENDPOINT_URL=self.s3_endpoint,
                **S3_CREDENTIALS,
            )
        return env


@contextlib.contextmanager
def services(
    private: bool = False, s3: bool = True, bucket: str = "bench", embedded: bool = False
) -> Iterator[Services]:
    """PostgreSQL, Redis and (``s3``) an S3 endpoint for one run; with ``embedded`` none
    (``make run``'s SQLite database, SQLite broker and local folder).

    Shared servers by default (``EASEL_TEST_PG`` / ``EASEL_TEST_REDIS``, or private
    ones started for the run when nothing answers there): a temporary database and a
    claimed Redis database number. ``private``: a ``redis-server`` and an ``initdb``
    cluster of the run's own, which the run may stop and restart (``Services.redis`` /
    ``Services.postgres``).
    """
    if embedded:
        yield Services("", "")
        return
    with contextlib.ExitStack() as stack:
        if private:
            private_redis = PrivateRedis().start()
            stack.callback(private_redis.stop)
            postgres = PrivatePostgres()
            stack.callback(postgres.destroy)
            postgres.start()
            found = Services(postgres.url, private_redis.url, postgres=postgres, redis=private_redis)
        else:
            admin_url = stack.enter_context(postgres_server())
            redis_url = stack.enter_context(redis_server())
            found = Services(
                stack.enter_context(temporary_database("easel_bench", admin_url)),
                stack.enter_context(claimed_redis_db(redis_url)),
            )
        if s3:
            found.s3_endpoint, found.s3 = stack.enter_context(s3_server(bucket))
            found.bucket = bucket
        yield found


# -- processes ---------------------------------------------------------------------------


def build_tiny_model(root: Path) -> Path:
    """tiny-sd built once under ``root`` (copied into each run's home)."""
    from easel.worker.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model(root / "models" / "tiny-sd")


@contextlib.contextmanager
def easel_stack(
    found: Services,
    settings: dict[str, str],
    tiny_model: Path | None = None,
    web_workers: int = 2,
    keep: bool = False,
    prefix: str = "easel-bench-",
) -> Iterator[Stack]:
    """A migrated stack on ``found`` in a temporary home; nothing started yet.

    On the way out its processes are stopped (SIGTERM, then SIGKILL) and the home
    removed (``keep`` leaves it, with the process logs, and says where). On an error
    the tail of every process log goes to stderr.
    """
    home = Path(tempfile.mkdtemp(prefix=prefix))
    if tiny_model is not None:
        install_tiny_model(tiny_model, home)
    placement = found.env() or {"EASEL_DATABASE_URL": f"sqlite:///{home / 'easel.db'}"}
    stack = Stack(env=base_env(home, **placement, **settings), workdir=home, web_workers=web_workers)
    try:
        stack.migrate()
        yield stack
    except subprocess.CalledProcessError as exc:
        output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        progress(f"failed: {' '.join(map(str, exc.cmd))}:\n{(output or '')[-3000:]}")
        raise
    except Exception:
        progress(f"failed; the processes' logs:\n{stack.logs()}")
        raise
    finally:
        stack.stop()
        stack.http.close()
        if keep:
            progress(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


# -- submitting and waiting --------------------------------------------------------------


def post_job(
    session: requests.Session, base_url: str, payload: dict[str, Any], deadline: float
) -> tuple[str | None, int]:
    """POST one job with an Idempotency-Key, retried through 429/503 and connection
    errors until ``deadline``: (its id or ``None``, retries)."""
    key, retries = uuid.uuid4().hex, 0
    while time.monotonic() < deadline:
        try:
            response = session.post(
                base_url + "/api/v1/jobs", json=payload, timeout=15, headers={"Idempotency-Key": key}
            )
        except requests.RequestException:
            retries += 1
            time.sleep(0.2)
            continue
        if response.status_code == 202:
            return response.json()["id"], retries
        if response.status_code not in (429, 503):
            raise RuntimeError(f"submit answered {response.status_code}: {response.text[:500]}")
        retries += 1
        time.sleep(0.2)
    return None, retries


def submit_all(
    stack: Stack, payloads: list[dict[str, Any]], timeout: float = 120, concurrency: int = 8
) -> tuple[list[str], float]:
    """Submit every payload at once (``concurrency`` parallel requests): the job ids in
    payload order and the wall-clock time (``time.time()``) of the first submit."""
    deadline = time.monotonic() + timeout
    local = threading.local()
    sessions: list[requests.Session] = []

    def one(payload: dict[str, Any]) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(stack.http.headers)
            sessions.append(local.session)
        job_id, _ = post_job(local.session, stack.base_url, payload, deadline)
        if job_id is None:
            raise TimeoutError(f"could not submit a job within {timeout}s")
        return job_id

    first_submit = time.time()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            ids = list(pool.map(one, payloads))
    finally:
        for session in sessions:
            session.close()
    return ids, first_submit


def wait_all(stack: Stack, ids: list[str], timeout: float, what: str = "jobs") -> float:
    """Wait until every job in ``ids`` is terminal; the wall-clock time it was seen.

    Completion is watched in the database (one small query every 0.2 s), so the
    watching adds no load to the web tier being measured; ``fetch_jobs`` then reads
    every job once through REST.
    """
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(stack.env["EASEL_DATABASE_URL"], pool_size=1)
    query = text("SELECT status, count(*) FROM jobs WHERE id IN :ids GROUP BY status").bindparams(
        bindparam("ids", expanding=True)
    )
    deadline = time.monotonic() + timeout
    last_report = 0.0
    try:
        while True:
            with engine.connect() as conn:
                counts = dict(conn.execute(query, {"ids": ids}).all())
            done = sum(counts.get(s, 0) for s in TERMINAL)
            if done >= len(ids):
                return time.time()
            if counts.get("failed") or counts.get("canceled"):
                raise RuntimeError(f"{what}: some jobs did not succeed: {counts}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {done}/{len(ids)} finished after {timeout}s: {counts}")
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                progress(f"{what}: {done}/{len(ids)} finished")
            time.sleep(0.2)
    finally:
        engine.dispose()


def fetch_jobs(stack: Stack, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Each job object, read once through REST."""
    return [stack.job(job_id) for job_id in ids]


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an ISO timestamp from the API (naive means UTC)."""
    moment = datetime.fromisoformat(stamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_succeeded(jobs: list[dict[str, Any]], images_per_job: int = 1) -> None:
    bad = [
        (j["id"], j["status"], j.get("error"))
        for j in jobs
        if j["status"] != "succeeded" or len(j["outputs"]) != images_per_job
    ]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed with their outputs: {bad[:5]}")


def batch_sizes(
    worker_log: str, ids: Iterable[str], jobs: list[dict[str, Any]] | None = None
) -> list[int] | None:
    """The number of jobs of ``ids`` in each worker run (pipeline call), largest first:
    from the job objects' ``batch_id`` when they have one, else from the worker's JSON
    log lines that share a ``batch_id``; ``None`` if neither names one."""
    wanted = set(ids)
    members: dict[str, set[str]] = {}
    for job in jobs or []:
        if job.get("batch_id") and job["id"] in wanted:
            members.setdefault(str(job["batch_id"]), set()).add(job["id"])
    if not members:
        for line in worker_log.splitlines():
            if '"batch_id"' not in line:
                continue
            try:
                record = json.loads(line[line.index("{") :])
            except ValueError:
                continue
            batch = record.get("batch_id")
            listed = record.get("job_ids") or ([record["job_id"]] if record.get("job_id") else [])
            if batch and isinstance(listed, list):
                members.setdefault(str(batch), set()).update(j for j in listed if j in wanted)
    sizes = sorted((len(m) for m in members.values() if m), reverse=True)
    return sizes or None


# -- one measured run --------------------------------------------------------------------

SCHEDULER = "euler_a"  # tiny-sd's default
GUIDANCE = 7.5


def compatible_jobs(count: int, size: int, steps: int, first_seed: int = 1000) -> list[dict[str, Any]]:
    """``count`` one-image txt2img jobs with one batch key (model, type, size, steps,
    scheduler, guidance) and different prompts and seeds."""
    return [
        {
            "type": "txt2img",
            "model": "tiny-sd",
            "prompt": f"a lighthouse at dusk, variation {i}",
            "width": size,
            "height": size,
            "steps": steps,
            "scheduler": SCHEDULER,
            "guidance_scale": GUIDANCE,
            "num_images": 1,
            "seed": first_seed + i,
        }
        for i in range(count)
    ]


def measure_rest(
    found: Services,
    model: Path,
    jobs: list[dict[str, Any]],
    settings: dict[str, str],
    timeout: float,
    keep: bool = False,
    label: str = "rest",
) -> dict[str, Any]:
    """``jobs`` through real ``easel web`` and one ``easel worker`` on ``found``, after a
    warm-up: images/s from the first submit to the last job's ``finished_at``.

    Authentication is off and the rate limits and queued cap are out of the way;
    ``settings`` adds the worker's (``EASEL_MAX_BATCH_SIZE``, ``EASEL_CPU_THREADS``...).
    """
    settings = {**NO_LIMITS, "EASEL_AUTH_ENABLED": "false", **settings}
    with easel_stack(found, settings, model, keep=keep) as stack:
        progress(f"{label}: starting web and one worker")
        stack.start_web()
        stack.start_worker()
        # Warm-up: one job (it waits for the worker to load the model), then one batch's
        # worth at once, so the worker has run the batched shape too.
        batch = int(settings.get("EASEL_MAX_BATCH_SIZE", "1"))
        for count in (1, batch) if batch > 1 else (1,):
            progress(f"{label}: warm-up, {count} job(s)")
            warm_up = compatible_jobs(count, jobs[0]["width"], jobs[0]["steps"], first_seed=1)
            warm_ids, _ = submit_all(stack, warm_up)
            wait_all(stack, warm_ids, timeout, f"{label} warm-up")
        progress(f"{label}: submitting {len(jobs)} jobs at once")
        ids, first_submit = submit_all(stack, jobs, timeout)
        submitted = time.time()
        seen_done = wait_all(stack, ids, timeout, label)
        finished = fetch_jobs(stack, ids)
        check_succeeded(finished)
        sizes = batch_sizes(stack.worker_log(), ids, finished)
    images = sum(len(job["outputs"]) for job in finished)
    seconds = max(epoch(job["finished_at"]) for job in finished) - first_submit
    progress(f"{label}: {images} images in {seconds:.1f}s")
    return {
        "seconds": round(seconds, 3),
        "images_per_s": rate(images, seconds),
        "submit_seconds": round(submitted - first_submit, 3),
        "seconds_until_seen_done": round(seen_done - first_submit, 3),
        "worker_runs": len(sizes) if sizes else None,
        "mean_images_per_run": round(images / len(sizes), 2) if sizes else None,
        "runs_by_jobs": {str(n): sizes.count(n) for n in sorted(set(sizes))} if sizes else None,
        "mean_generate_seconds_per_run": mean_generate_seconds(finished),
        "batches": batch_times(finished, first_submit),
    }


@dataclass(frozen=True)
class PipelineOptions:
    """The worker and stack options of throughput and batching (``pipeline_options``)."""

    threads: int = 0
    batch_wait_ms: int | None = None
    timeout: float = 900
    private: bool = False
    embedded: bool = False
    keep: bool = False
    extra: tuple[tuple[str, str], ...] = ()
    """More settings of the stack, as (name, value) pairs."""

    def worker_settings(self, batch: int) -> dict[str, str]:
        """The worker's settings with ``EASEL_MAX_BATCH_SIZE=batch``."""
        wait = {"EASEL_BATCH_WAIT_MS": str(self.batch_wait_ms)} if self.batch_wait_ms is not None else {}
        threads = {"EASEL_CPU_THREADS": str(self.threads)}
        return {"EASEL_MAX_BATCH_SIZE": str(batch), **wait, **threads, **dict(self.extra)}

    def measure_rest(self, model: Path, jobs: list[dict[str, Any]], batch: int, label: str) -> dict[str, Any]:
        """``measure_rest`` of ``jobs`` on fresh services, the worker batching up to ``batch``."""
        with services(private=self.private, embedded=self.embedded) as found:
            settings = self.worker_settings(batch)
            return measure_rest(found, model, jobs, settings, self.timeout, self.keep, label=label)

    def figures(self, jobs: int, size: int, steps: int) -> dict[str, Any]:
        """What a report says of its ``jobs`` (``compatible_jobs``) and these options."""
        return {
            "model": "tiny-sd",
            "jobs": jobs,
            "width": size,
            "height": size,
            "steps": steps,
            "scheduler": SCHEDULER,
            "guidance_scale": GUIDANCE,
            "cpu_threads": self.threads,
            "batch_wait_ms": self.batch_wait_ms,
        }


@contextlib.contextmanager
def temporary_tiny_model() -> Iterator[Path]:
    """tiny-sd built in a temporary folder, removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="easel-bench-model-"))
    try:
        progress("building tiny-sd")
        yield build_tiny_model(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def batch_times(finished: list[dict[str, Any]], first_submit: float) -> list[dict[str, float]] | None:
    """Each worker run (pipeline call) of ``finished``, in order, in seconds from
    ``first_submit``: ``start``, its last job's claim; ``generate``, the worker's
    ``generate_seconds``; ``end``, its last job recorded; and its ``images``. ``None``
    when a job has no batch id or generate time."""
    runs: dict[str, dict[str, float]] = {}
    for job in finished:
        generate = (job.get("timings") or {}).get("generate_seconds")
        if not job.get("batch_id") or generate is None or not job.get("started_at"):
            return None
        run = runs.setdefault(
            str(job["batch_id"]), {"start": 0.0, "generate": generate, "end": 0.0, "images": 0}
        )
        run["start"] = max(run["start"], epoch(job["started_at"]) - first_submit)
        run["end"] = max(run["end"], epoch(job["finished_at"]) - first_submit)
        run["images"] += len(job["outputs"])
    return sorted(
        ({k: round(v, 3) for k, v in run.items()} for run in runs.values()), key=lambda r: r["start"]
    )


def round_breakdown(batches: list[dict[str, float]], bare_image_seconds: float) -> dict[str, float]:
    """Where a REST round's seconds went, against bare batched denoising at
    ``bare_image_seconds`` per image (``batch_times``' runs; the parts add up to the
    round): ``bare``, its images at the bare rate; ``head``, first submit to the first
    run's last claim; ``first_batch``, that run's denoising beyond bare (it runs while the
    submits arrive); ``later_batches``, the other runs' beyond bare; ``between_batches``,
    each denoising's end to the next run's last claim (storing beside it, claiming,
    preparing); ``tail``, the last denoising's end to the last job recorded."""
    first, last = batches[0], batches[-1]
    bare = [run["images"] * bare_image_seconds for run in batches]
    parts = {
        "bare": sum(bare),
        "head": first["start"],
        "first_batch": first["generate"] - bare[0],
        "later_batches": sum(run["generate"] for run in batches[1:]) - sum(bare[1:]),
        "between_batches": sum(
            after["start"] - (before["start"] + before["generate"])
            for before, after in itertools.pairwise(batches)
        ),
        "tail": max(run["end"] for run in batches) - (last["start"] + last["generate"]),
    }
    return {name: round(seconds, 3) for name, seconds in parts.items()}


def mean_generate_seconds(finished: list[dict[str, Any]]) -> float | None:
    """The worker's own time in the pipeline call, per run (jobs of one batch share it)."""
    per_run = {job["batch_id"]: job["timings"].get("generate_seconds") for job in finished}
    values = [v for v in per_run.values() if v is not None]
    return round(sum(values) / len(values), 3) if values else None


# -- figures -----------------------------------------------------------------------------


def machine(load_at_start: float) -> dict[str, Any]:
    """The CPUs and the 1-minute load average at the start and end of a run: figures
    taken while other work ran (load above the benchmark's own) are not comparable."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
    }


def totals(started: float, load_at_start: float) -> dict[str, Any]:
    """The closing figures of every report: the run's seconds (from ``time.monotonic()``
    at ``started``) and the ``machine`` it ran on."""
    return {"seconds_total": round(time.monotonic() - started, 1), "machine": machine(load_at_start)}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


@dataclass
class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._start


def bench_parser(prog: str | None, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a benchmark: ``prog``, and its module docstring ``doc`` as
    the description, kept as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_stack_arguments(parser: argparse.ArgumentParser, timeout: float | None = None) -> None:
    """The options every benchmark that starts its own stack takes."""
    if timeout is not None:
        parser.add_argument("--timeout", type=float, default=timeout, help="seconds a run may take")
    parser.add_argument("--private-servers", action="store_true", help="own redis-server and PostgreSQL")
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="make run's defaults: SQLite, the SQLite broker, a local folder (no server)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and process logs")


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    """The options of a ``pipeline_parser``'s arguments, but the job shape."""
    return PipelineOptions(
        args.threads, args.batch_wait_ms, args.timeout, args.private_servers, args.embedded, args.keep
    )


def pipeline_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The ``bench_parser`` of throughput and batching, with the job shape, worker and stack
    options they share (each adds its own)."""
    parser = bench_parser(prog, doc)
    parser.add_argument("--size", type=int, default=256, help="width and height, a multiple of 8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (EASEL_CPU_THREADS; 0: torch's default)"
    )
    parser.add_argument(
        "--batch-wait-ms", type=int, default=None, help="EASEL_BATCH_WAIT_MS of the worker (default: its own)"
    )
    add_stack_arguments(parser, timeout=900)
    return parser
