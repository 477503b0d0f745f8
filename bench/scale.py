"""Flat cost: the hot calls with a large finished-job history against an empty one, or
with a deep queue against a shallow one (``--mode queue``).

    python -m bench.scale                                   # 1,000,000 on PostgreSQL, 300,000 on SQLite
    python -m bench.scale --postgres-jobs 100000 --sqlite-jobs 30000 --samples 50
    python -m bench.scale --mode queue                      # 1,000,000 / 300,000 queued jobs of 1,000 owners

For each backend (``--backends``), two databases of this run's own: one with an empty
history (or ``--empty-jobs`` finished jobs, so its list pages are full too) and one with
the history, bulk-inserted (PostgreSQL: one ``INSERT ... SELECT`` over
``generate_series``; SQLite: ``executemany`` in chunks): jobs finished over the last
20 days by the same API key that makes the calls (the worst case for its job list and
its active-jobs count), with the maintained statistics rebuilt as the finishing
transactions would have kept them. PostgreSQL is then ``ANALYZE``d, as autovacuum
would after such a load; SQLite is measured as a deployment leaves it (no
``ANALYZE``). The calls then run on both databases in turn, call by call, so whatever
else the machine does weighs on both alike.

The calls run in this process against the real database: the REST calls through the
Flask app (``create_app``, authentication on), ``claim`` and ``sweep`` as a worker makes
them, ``prune`` as a retention pass with nothing due. With ``--queued`` jobs waiting
(and two running) in each database:

- ``submit``: ``POST /api/v1/jobs`` (64x64, 4 steps); ``cancel`` then cancels that job,
  so the queue stays the same size;
- ``get``: ``GET /api/v1/jobs/<id>`` of a queued job (queue position and ETA);
- ``list``: ``GET /api/v1/jobs?limit=20`` (the key's newest jobs: the queued ones);
- ``list_succeeded``: ``GET /api/v1/jobs?status=succeeded&limit=20``;
- ``metrics``: ``GET /metrics``;
- ``claim``: the best queued job claimed (then put back, untimed);
- ``sweep``: the lost-worker sweep;
- ``prune``: a retention pass that finds nothing due;
- ``usage``: ``GET /api/v1/usage`` of the last 30 days (the history's: read from the
  maintained daily rows, ``shared.usage``), and ``usage_all``: every key's (an admin).

Prints one JSON object: per backend the history sizes, how long the fill took, and per
call p50 / p99 in milliseconds with the empty and the full history, the ratio of the
p50s and whether it meets the target (full p50 within 2x of the empty one or 25 ms
more, whichever is larger). Progress goes to stderr.

``--mode queue``: the same, with a deep queue instead of a history: the "full" database
holds ``--postgres-queued`` (1,000,000) or ``--sqlite-queued`` (300,000) queued jobs
of ``--owners`` (1,000) other keys, at priority 0, created over an hour before the
calling key's own ``--queued`` (so those are at the back of the queue), bulk-inserted
like the history with the queue's maintained state rebuilt (``queue_turns``); the
"empty" one ``--shallow-queued`` (50) such jobs. The calls: ``submit``, ``get``,
``list``, ``list_queued`` (``?status=queued``), ``cancel``, ``metrics``, ``admin``
(``GET /admin`` with an admin key), ``keda`` (the ScaledObject's query in
deploy/k8s, PostgreSQL only), ``claim`` (a batch of up to 4 from the deep level:
the best job of the 1,000 owners and its companions, then put back as a lost
worker's jobs are) and ``sweep``. Then the drain rate: ``--drain-jobs`` (200) jobs
of 10 keys at priority 1 (their own batch key) claimed in batches of 4 and finished
(``finish_all``, nothing stored: the database's part of a worker's work alone), on
each database in turn, ``--drain-rounds`` (3) times; jobs/s of each round, their
medians and the ratio (target: at least 0.9). Then the same with ``--drain-work-ms``
(100) of pause between each claim and its finish, standing for the pipeline call
(``drain_with_work``; 0 skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._stack import emit, percentile, progress
from bench.processes import TINY_SD_JOB

CALLS = (
    "submit",
    "get",
    "list",
    "list_succeeded",
    "cancel",
    "metrics",
    "claim",
    "sweep",
    "prune",
    "usage",
    "usage_all",
)
QUEUE_CALLS = ("submit", "get", "list", "list_queued", "cancel", "metrics", "admin", "keda", "claim", "sweep")
QUEUE_WORKER = "bench:queue"
DRAIN_WORKER = "bench:drain"
CLAIM_BATCH = 4
SCALED_OBJECT = (
    Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "worker-group" / "scaledobject.yaml"
)
HISTORY_WORKER = "bench:history"
LIVE_WORKER = "bench:live"
WARMUP = 5  # untimed rounds first: caches, compiled statements
TIMINGS = {
    "generate_seconds": 0.3,
    "run_seconds": 0.45,
    "load_seconds": 0.0,
    "batch_images": 1,
    "batch_jobs": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="postgresql,sqlite", help="postgresql, sqlite or both (comma)")
    parser.add_argument("--postgres-jobs", type=int, default=1_000_000, help="finished jobs on PostgreSQL")
    parser.add_argument("--sqlite-jobs", type=int, default=300_000, help="finished jobs on SQLite")
    parser.add_argument("--samples", type=int, default=100, help="timed calls of each kind per run")
    parser.add_argument("--queued", type=int, default=50, help="jobs waiting in each queue")
    parser.add_argument(
        "--empty-jobs",
        type=int,
        default=0,
        help="finished jobs in the 'empty' database (e.g. 100, so its list pages are full too)",
    )
    parser.add_argument(
        "--mode", choices=("history", "queue"), default="history", help="a deep history, or a deep queue"
    )
    parser.add_argument(
        "--postgres-queued", type=int, default=1_000_000, help="queue mode: PostgreSQL's deep queue"
    )
    parser.add_argument("--sqlite-queued", type=int, default=300_000, help="queue mode: SQLite's deep queue")
    parser.add_argument("--shallow-queued", type=int, default=50, help="queue mode: the shallow queue")
    parser.add_argument("--owners", type=int, default=1000, help="queue mode: keys owning the queue")
    parser.add_argument("--drain-jobs", type=int, default=200, help="queue mode: jobs drained per round")
    parser.add_argument("--drain-rounds", type=int, default=3, help="queue mode: drain rounds per database")
    parser.add_argument(
        "--drain-work-ms",
        type=float,
        default=100.0,
        help="queue mode: also drain with this pause per batch, for its pipeline call (0: not)",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"postgresql", "sqlite"})
    if unknown or not backends:
        parser.error(f"--backends: {','.join(unknown) or '(none)'} is not postgresql or sqlite")
    positive = ("samples", "owners", "drain_jobs", "drain_rounds")
    for name in (
        "postgres_jobs",
        "sqlite_jobs",
        "samples",
        "queued",
        "empty_jobs",
        "postgres_queued",
        "sqlite_queued",
        "shallow_queued",
        *positive[1:],
    ):
        if getattr(args, name) < (1 if name in positive else 0):
            parser.error(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    if args.drain_work_ms < 0:
        parser.error(f"--drain-work-ms: must be 0 or more, got {args.drain_work_ms}")
    args.backends = backends
    return args


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    """A migrated, empty database of this run's own."""
    from easel.migrations.upgrade import upgrade

    if backend == "sqlite":
        url = f"sqlite:///{folder / 'easel.db'}"
        upgrade(url)
        yield url
        return
    from bench.servers import postgres_server, temporary_database

    with postgres_server() as admin, temporary_database("easel_scale", admin) as url:
        upgrade(url)
        yield url


class Bench:
    """The app, a key, a live worker and a standing queue on one database."""

    def __init__(self, url: str, home: Path, queued: int) -> None:
        from sqlalchemy.orm import sessionmaker

        from easel.shared.db import make_engine
        from easel.shared.settings import Settings
        from easel.shared.storage import LocalStorage
        from easel.web import create_app
        from easel.web.keys import create_key

        self.settings = Settings(
            home=home,
            database_url=url,
            auth_enabled=True,
            rate_limit="100000000/minute",
            submit_rate_limit="100000000/minute",
            max_queued_per_key=100_000_000,
            quota_images_per_day=10**15,  # never reached: each submit reads the key's usage row
            worker_lost_after_seconds=1e9,  # the live worker row stays live through the run
            log_format="text",
        )
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.storage = LocalStorage(home / "outputs")
        with self.sessions() as session:
            row, key = create_key(session, "bench")
            admin_key = create_key(session, "bench-admin", admin=True)[1]
            session.commit()
            self.owner = row.id
        self.client = create_app(self.settings).test_client()
        self.headers = {"Authorization": f"Bearer {key}"}
        self.admin_headers = {"Authorization": f"Bearer {admin_key}"}
        self._add_live_worker()
        self.queued = [self._submit()["id"] for _ in range(queued)]
        self._run(self.queued[:2] if len(self.queued) > 2 else [])

    # -- set-up ------------------------------------------------------------------------

    def _add_live_worker(self) -> None:
        from easel.shared.models import Worker, utcnow

        with self.sessions() as session:
            now = utcnow()
            session.add(Worker(id=LIVE_WORKER, hostname="bench", models=[], started_at=now, last_seen_at=now))
            session.commit()

    def _run(self, job_ids: list[str]) -> None:
        """Two of the queued jobs are running on the live worker (claimed as it would)."""
        from easel.shared.transitions import claim

        with self.sessions() as session:
            claim(session, job_ids, LIVE_WORKER, "bench")
            session.commit()
        self.queued = [job_id for job_id in self.queued if job_id not in job_ids]

    def _submit(self) -> dict[str, Any]:
        body = {"prompt": "bench", "width": 64, "height": 64, "steps": 4}
        response = self.client.post("/api/v1/jobs", json=body, headers=self.headers)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.get_data(as_text=True)}")
        return response.get_json()

    def _get(self, path: str, headers: dict[str, str] | None = None) -> None:
        response = self.client.get(path, headers=headers or self.headers)
        if response.status_code != 200:
            raise RuntimeError(
                f"GET {path} answered {response.status_code}: {response.get_data(as_text=True)}"
            )

    # -- the calls ---------------------------------------------------------------------

    def calls(self) -> dict[str, Callable[[], Any]]:
        """Each measured call; one that returns a callable wants it run, untimed, after."""
        from easel.shared.retention import Policy, prune
        from easel.worker.engine.claims import claim_batch
        from easel.worker.sweeper import Sweeper

        sweeper = Sweeper(sessions=self.sessions, models=[], publish=lambda *_: None)
        queued = itertools.cycle(self.queued)
        nothing_due = Policy(outputs_days=3650, inputs_days=3650, rows_days=3650)
        pending: list[str] = []
        month_ago = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()  # the history's days

        def submit() -> None:
            pending.append(self._submit()["id"])

        def cancel() -> None:
            job_id = pending.pop()
            response = self.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=self.headers)
            if response.status_code != 200:
                raise RuntimeError(
                    f"cancel answered {response.status_code}: {response.get_data(as_text=True)}"
                )

        def claim() -> Callable[[], None]:
            with self.sessions() as session:
                claimed = claim_batch(session, "bench:claimer", None, 1)
            if not claimed:
                raise RuntimeError("nothing was claimable")
            return lambda: self._put_back([job.id for job in claimed])

        return {
            "submit": submit,
            "get": lambda: self._get(f"/api/v1/jobs/{next(queued)}"),
            "list": lambda: self._get("/api/v1/jobs?limit=20"),
            "list_succeeded": lambda: self._get("/api/v1/jobs?status=succeeded&limit=20"),
            "cancel": cancel,
            "metrics": lambda: self._get("/metrics"),
            "claim": claim,
            "sweep": sweeper.recover_lost_jobs,
            "prune": lambda: prune(self.sessions, self.storage, nothing_due),
            "usage": lambda: self._get(f"/api/v1/usage?from={month_ago}"),
            "usage_all": lambda: self._get(f"/api/v1/usage?from={month_ago}", self.admin_headers),
        }

    def queue_calls(self) -> dict[str, Callable[[], Any]]:
        """Each measured call of the deep-queue mode (see ``calls``)."""
        from sqlalchemy import text

        from easel.worker.engine.claims import claim_batch

        calls = self.calls()
        keda = text(keda_query()) if self.engine.dialect.name == "postgresql" else None

        def claim() -> Callable[[], None]:
            with self.sessions() as session:
                claimed = claim_batch(session, QUEUE_WORKER, None, CLAIM_BATCH)
            if len(claimed) != CLAIM_BATCH:
                raise RuntimeError(f"a claim took {len(claimed)} jobs, not {CLAIM_BATCH}")
            return lambda: self._put_back([job.id for job in claimed], QUEUE_WORKER)

        def keda_count() -> None:
            with self.engine.connect() as conn:
                conn.execute(keda).scalar_one()

        return {
            **{name: calls[name] for name in ("submit", "get", "list", "cancel", "metrics", "sweep")},
            "list_queued": lambda: self._get("/api/v1/jobs?status=queued&limit=20"),
            "admin": lambda: self._get("/admin", self.admin_headers),
            "keda": keda_count if keda is not None else lambda: None,
            "claim": claim,
        }

    def _put_back(self, job_ids: list[str], worker: str = "bench:claimer") -> None:
        """Claimed jobs back in the queue, as the sweep puts back a lost worker's."""
        from easel.shared.transitions import recover_lost

        with self.sessions() as session:
            for job_id in job_ids:
                recover_lost(session, job_id, worker, 0, False, 1)

    # -- the queue ---------------------------------------------------------------------

    def fill_queue(self, count: int, owners: int) -> float:
        """Add ``count`` queued jobs of ``owners`` other keys, created before this key's
        own, and rebuild the queue's state from them; seconds taken."""
        from easel.shared import queue_turns

        t0 = time.perf_counter()
        if self.engine.dialect.name == "postgresql":
            self._fill_queue_postgres(count, owners)
        else:
            self._fill_queue_sqlite(count, owners)
        with self.sessions() as session:
            queue_turns.rebuild(session)  # what the submits' transactions would have kept
            session.commit()
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy import text

            # VACUUM too: autovacuum would, right after such a load, and in the middle of the
            # measurement if it were left to do it.
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        return time.perf_counter() - t0

    def _fill_queue_postgres(self, count: int, owners: int) -> None:
        from sqlalchemy import text

        statement = """
            INSERT INTO jobs (id, type, model, status, priority, prompt, negative_prompt, width, height,
                steps, guidance_scale, scheduler, seed, num_images, attempts, progress_step,
                progress_total, cancel_requested, timings, owner_id, webhook_attempts, created_at,
                updated_at)
            SELECT md5('queued' || i), 'txt2img', 'tiny-sd', 'queued', 0, 'queued ' || i, '', 64, 64,
                4, 7.5, 'euler', i, 1, 0, 0, 4, false, CAST('{}' AS json), md5('owner' || (i % :owners)),
                0, t.created, t.created
            FROM generate_series(1, :n) AS i,
                LATERAL (SELECT now() - interval '2 hours' + interval '1 hour' * (i::float / :n) AS created) t
        """
        with self.engine.begin() as conn:
            conn.execute(text(statement), {"n": count, "owners": owners})

    def _fill_queue_sqlite(self, count: int, owners: int, chunk: int = 20_000) -> None:
        import hashlib

        from easel.shared.models import Job, utcnow

        jobs = Job.__table__
        start = utcnow() - timedelta(hours=2)
        for first in range(1, count + 1, chunk):
            rows = []
            for i in range(first, min(first + chunk, count + 1)):
                created = start + timedelta(hours=1) * (i / count)
                rows.append(
                    {
                        "id": hashlib.md5(f"queued{i}".encode()).hexdigest(),
                        "type": "txt2img",
                        **TINY_SD_JOB,
                        "status": "queued",
                        "priority": 0,
                        "prompt": f"queued {i}",
                        "seed": i,
                        "num_images": 1,
                        "attempts": 0,
                        "progress_step": 0,
                        "progress_total": 4,
                        "cancel_requested": False,
                        "timings": {},
                        "owner_id": hashlib.md5(f"owner{i % owners}".encode()).hexdigest(),
                        "webhook_attempts": 0,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
            with self.engine.begin() as conn:
                conn.execute(jobs.insert(), rows)
            progress(f"sqlite: {min(first + chunk - 1, count)} of {count} queued jobs inserted")

    def drain(self, count: int, work_seconds: float = 0.0) -> float:
        """Jobs/s of ``count`` new jobs of 10 keys at priority 1 (a batch key of their
        own) claimed in batches of ``CLAIM_BATCH`` and finished, nothing stored; with
        ``work_seconds`` of pause between each claim and its finish (its pipeline call)."""
        from easel.shared.models import Job, JobStatus
        from easel.shared.transitions import Ending, finish_all
        from easel.worker.engine.claims import claim_batch

        with self.sessions() as session:
            for i in range(count):
                fields = {**TINY_SD_JOB, "steps": 5, "prompt": f"drain {i}", "seed": i}
                session.add(Job(type="txt2img", **fields, priority=1, owner_id=f"drain{i % 10}", timings={}))
            session.commit()
        done = 0
        t0 = time.perf_counter()
        while done < count:
            with self.sessions() as session:
                claimed = claim_batch(session, DRAIN_WORKER, None, CLAIM_BATCH)
                if not claimed or claimed[0].priority != 1:
                    raise RuntimeError(f"the drain stopped after {done} of {count} jobs")
                time.sleep(work_seconds)
                endings = [Ending(job.id, JobStatus.SUCCEEDED, dict(TIMINGS)) for job in claimed]
                finish_all(session, DRAIN_WORKER, endings)
            done += len(claimed)
        return count / (time.perf_counter() - t0)

    # -- the history -------------------------------------------------------------------

    def fill(self, count: int) -> float:
        """Add ``count`` finished jobs of this key (and their outputs); seconds taken."""
        from easel.shared import stats, usage

        t0 = time.perf_counter()
        if self.engine.dialect.name == "postgresql":
            self._fill_postgres(count)
        else:
            self._fill_sqlite(count)
        with self.sessions() as session:
            stats.rebuild(session)  # what the finishing transactions would have kept
            usage.rebuild(session)  # and the key's daily usage
            session.commit()
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                from sqlalchemy import text

                conn.execute(text("ANALYZE"))
        return time.perf_counter() - t0

    def _fill_postgres(self, count: int) -> None:
        import json

        from sqlalchemy import text

        status = "CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 97 THEN 'failed' ELSE 'canceled' END"
        statement = f"""
            INSERT INTO jobs (id, type, model, status, priority, prompt, negative_prompt, width, height,
                steps, guidance_scale, scheduler, seed, num_images, attempts, progress_step,
                progress_total, cancel_requested, worker_id, batch_size, error_code, error_message,
                timings, owner_id, webhook_attempts, created_at, started_at, finished_at, updated_at)
            SELECT md5('history' || i), 'txt2img', 'tiny-sd', {status}, 0, 'history ' || i, '', 64, 64,
                4, 7.5, 'euler', i, 1, 1, 4, 4, false, :worker, 1,
                CASE WHEN i % 100 BETWEEN 90 AND 96 THEN 'generation_error' END,
                CASE WHEN i % 100 BETWEEN 90 AND 96 THEN 'bench' END,
                CAST(:timings AS json), :owner, 0,
                t.created, t.created + interval '2 seconds', t.created + interval '3 seconds',
                t.created + interval '3 seconds'
            FROM generate_series(1, :n) AS i,
                LATERAL (SELECT now() - interval '1 hour' - interval '20 days' * (i::float / :n) AS created) t
        """
        outputs = """
            INSERT INTO job_outputs (job_id, "index", seed, storage_key, width, height, content_type,
                size_bytes, created_at)
            SELECT id, 0, seed, 'jobs/' || id || '/0.png', 64, 64, 'image/png', 1000, finished_at
            FROM jobs WHERE worker_id = :worker AND status = 'succeeded'
        """
        params = {"worker": HISTORY_WORKER, "timings": json.dumps(TIMINGS), "owner": self.owner, "n": count}
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)
            conn.execute(text(outputs), {"worker": HISTORY_WORKER})

    def _fill_sqlite(self, count: int, chunk: int = 20_000) -> None:
        import hashlib

        from easel.shared.models import Job, JobOutput, utcnow

        jobs, outputs = Job.__table__, JobOutput.__table__
        start = utcnow() - timedelta(hours=1)
        for first in range(1, count + 1, chunk):
            job_rows, output_rows = [], []
            for i in range(first, min(first + chunk, count + 1)):
                created = start - timedelta(days=20) * (i / count)
                status = "succeeded" if i % 100 < 90 else "failed" if i % 100 < 97 else "canceled"
                job_id = hashlib.md5(f"history{i}".encode()).hexdigest()
                job_rows.append(
                    {
                        "id": job_id,
                        "type": "txt2img",
                        **TINY_SD_JOB,
                        "status": status,
                        "priority": 0,
                        "prompt": f"history {i}",
                        "seed": i,
                        "num_images": 1,
                        "attempts": 1,
                        "progress_step": 4,
                        "progress_total": 4,
                        "cancel_requested": False,
                        "worker_id": HISTORY_WORKER,
                        "batch_size": 1,
                        "error_code": "generation_error" if status == "failed" else None,
                        "error_message": "bench" if status == "failed" else None,
                        "timings": TIMINGS,
                        "owner_id": self.owner,
                        "webhook_attempts": 0,
                        "created_at": created,
                        "started_at": created + timedelta(seconds=2),
                        "finished_at": created + timedelta(seconds=3),
                        "updated_at": created + timedelta(seconds=3),
                    }
                )
                if status == "succeeded":
                    output_rows.append(
                        {
                            "job_id": job_id,
                            "index": 0,
                            "seed": i,
                            "storage_key": f"jobs/{job_id}/0.png",
                            "width": 64,
                            "height": 64,
                            "content_type": "image/png",
                            "size_bytes": 1000,
                            "created_at": created + timedelta(seconds=3),
                        }
                    )
            with self.engine.begin() as conn:
                conn.execute(jobs.insert(), job_rows)
                conn.execute(outputs.insert(), output_rows)
            progress(f"sqlite: {min(first + chunk - 1, count)} of {count} finished jobs inserted")

    def close(self) -> None:
        self.engine.dispose()


def measure(benches: list[Bench], samples: int, queue: bool = False) -> list[dict[str, list[float]]]:
    """Milliseconds of each call (``CALLS``, or with ``queue`` the deep-queue
    ``QUEUE_CALLS``) on each bench, ``samples`` times after ``WARMUP`` untimed rounds.
    Interleaved (each call on every bench in turn), so whatever else the machine does at
    the time weighs on every database alike."""
    names = QUEUE_CALLS if queue else CALLS
    calls = [bench.queue_calls() if queue else bench.calls() for bench in benches]
    times: list[dict[str, list[float]]] = [{name: [] for name in names} for _ in benches]
    for round_ in range(samples + WARMUP):
        for name in names:
            for call, figures in zip(calls, times, strict=True):
                t0 = time.perf_counter()
                after = call[name]()
                elapsed = (time.perf_counter() - t0) * 1000
                if round_ >= WARMUP:
                    figures[name].append(elapsed)
                if callable(after):
                    after()  # untimed: put the claimed job back
    return times


def keda_query() -> str:
    """The query of deploy/k8s's ScaledObject (its models: tiny-sd)."""
    import yaml

    scaled = yaml.safe_load(SCALED_OBJECT.read_text())
    return str(scaled["spec"]["triggers"][0]["metadata"]["query"])


def summarise(empty: list[float], full: list[float]) -> dict[str, Any]:
    """p50 / p99 (ms) of both, the p50 ratio, and the target (2x or +25 ms)."""
    e50, f50 = percentile(empty, 50), percentile(full, 50)
    assert e50 is not None and f50 is not None
    return {
        "empty_p50_ms": round(e50, 2),
        "empty_p99_ms": round(percentile(empty, 99) or 0.0, 2),
        "full_p50_ms": round(f50, 2),
        "full_p99_ms": round(percentile(full, 99) or 0.0, 2),
        "p50_ratio": round(f50 / e50, 2) if e50 else None,
        "within_target": f50 <= max(2 * e50, e50 + 25),
    }


def run_backend(backend: str, history: int, args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="easel-scale-")))
        benches = []
        for name in ("empty", "full"):
            (tmp / name).mkdir()
            url = stack.enter_context(database(backend, tmp / name))
            benches.append(Bench(url, tmp / name, args.queued))
            stack.callback(benches[-1].close)
        empty, full = benches
        if args.empty_jobs:
            empty.fill(args.empty_jobs)
        progress(f"{backend}: inserting {history} finished jobs")
        fill_seconds = full.fill(history)
        progress(f"{backend}: {history} finished jobs in {fill_seconds:.1f}s; measuring both databases")
        empty_times, full_times = measure(benches, args.samples)
    calls = {name: summarise(empty_times[name], full_times[name]) for name in CALLS}
    return {
        "history_jobs": history,
        "empty_history_jobs": args.empty_jobs,
        "fill_seconds": round(fill_seconds, 1),
        "samples": args.samples,
        "queued": args.queued,
        "all_within_target": all(call["within_target"] for call in calls.values()),
        "calls": calls,
    }


def measure_drain(
    shallow: Bench, deep: Bench, args: argparse.Namespace, work: float, backend: str
) -> dict[str, Any]:
    """Drain rates of both queues, ``--drain-rounds`` each, taking turns going first."""
    import statistics

    rates: dict[str, list[float]] = {"shallow": [], "deep": []}
    for round_ in range(args.drain_rounds):
        order = [("shallow", shallow), ("deep", deep)]
        for name, bench in order if round_ % 2 == 0 else order[::-1]:
            rates[name].append(round(bench.drain(args.drain_jobs, work), 1))
        progress(
            f"{backend}: drain round {round_ + 1} ({work * 1000:g} ms a batch): "
            f"{rates['shallow'][-1]} / {rates['deep'][-1]} jobs/s"
        )
    shallow_rate, deep_rate = statistics.median(rates["shallow"]), statistics.median(rates["deep"])
    return {
        "jobs": args.drain_jobs,
        "batch": CLAIM_BATCH,
        "work_ms_per_batch": work * 1000,
        "shallow_jobs_per_s": rates["shallow"],
        "deep_jobs_per_s": rates["deep"],
        "shallow_median": shallow_rate,
        "deep_median": deep_rate,
        "ratio": round(deep_rate / shallow_rate, 2),
        "within_target": deep_rate >= 0.9 * shallow_rate,
    }


def run_queue_backend(backend: str, deep: int, args: argparse.Namespace) -> dict[str, Any]:
    """The deep-queue mode on one backend: a shallow and a deep queue, measured in turn."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="easel-scale-")))
        benches = []
        for name in ("shallow", "deep"):
            (tmp / name).mkdir()
            url = stack.enter_context(database(backend, tmp / name))
            benches.append(Bench(url, tmp / name, args.queued))
            stack.callback(benches[-1].close)
        shallow, full = benches
        shallow.fill_queue(args.shallow_queued, min(args.owners, max(1, args.shallow_queued)))
        progress(f"{backend}: inserting {deep} queued jobs of {args.owners} keys")
        fill_seconds = full.fill_queue(deep, args.owners)
        progress(f"{backend}: {deep} queued jobs in {fill_seconds:.1f}s; measuring both databases")
        shallow_times, deep_times = measure(benches, args.samples, queue=True)
        drain = measure_drain(shallow, full, args, 0.0, backend)
        worked = None
        if args.drain_work_ms:
            worked = measure_drain(shallow, full, args, args.drain_work_ms / 1000, backend)
    calls = {name: summarise(shallow_times[name], deep_times[name]) for name in QUEUE_CALLS}
    if backend != "postgresql":
        del calls["keda"]
    return {
        "deep_queued": deep,
        "shallow_queued": args.shallow_queued,
        "owners": args.owners,
        "fill_seconds": round(fill_seconds, 1),
        "samples": args.samples,
        "own_queued": args.queued,
        "all_within_target": all(call["within_target"] for call in calls.values()) and drain["within_target"],
        "calls": calls,
        "drain": drain,
        "drain_with_work": worked,
    }


def main(argv: list[str] | None = None) -> None:
    import logging

    args = parse_args(argv)
    logging.getLogger("easel").setLevel(logging.ERROR)  # no line per accepted job or republish
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.mode == "queue":
        deep = {"postgresql": args.postgres_queued, "sqlite": args.sqlite_queued}
        figures = {backend: run_queue_backend(backend, deep[backend], args) for backend in args.backends}
        emit({"benchmark": "scale", "mode": "queue", **figures})
        return
    sizes = {"postgresql": args.postgres_jobs, "sqlite": args.sqlite_jobs}
    figures = {backend: run_backend(backend, sizes[backend], args) for backend in args.backends}
    emit({"benchmark": "scale", **figures})


if __name__ == "__main__":
    main(sys.argv[1:])
