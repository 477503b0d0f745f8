"""Builders of test data shared by the test modules (images, requests, jobs, stacks) and
readers of what they produce. Test modules import from here, never from each other.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from bench.processes import TINY_SD_JOB, Stack, base_env, install_tiny_model
from easel.shared.models import Job, JobType, Worker, utcnow
from easel.shared.params import GenerationParams
from easel.shared.settings import Settings
from easel.worker.engine.generate import GenerationRequest

if TYPE_CHECKING:
    from easel.worker.engine.runner import JobRunner

DEFAULT_PARAMS: dict[str, Any] = {"type": JobType.TXT2IMG, **TINY_SD_JOB, "prompt": "a blue bird", "seed": 11}


def generation_request(
    image: Any = None, mask: Any = None, seeds: tuple[int, ...] | None = None, **fields: Any
) -> GenerationRequest:
    """A request with ``DEFAULT_PARAMS`` overridden by ``fields``; ``seeds`` (consecutive)
    sets ``seed`` and ``num_images``."""
    if seeds is not None:
        assert list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))), "seeds must be consecutive"
        fields = {**fields, "seed": seeds[0], "num_images": len(seeds)}
    return GenerationRequest(GenerationParams(**{**DEFAULT_PARAMS, **fields}), image=image, mask=mask)


def generate_one(pipe: Any, request: GenerationRequest, on_step: Any = None, **options: Any) -> list[Any]:
    """The images of one request run alone (a batch of one)."""
    from easel.worker.engine.generate import generate_batch

    return generate_batch(pipe, [request], on_step, **options)[0]


# -- images ------------------------------------------------------------------------------


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    """An RGB picture whose every pixel differs from its neighbours."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def box_mask(
    width: int = 64, height: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)
) -> Image.Image:
    """A mask that is white (repaint) inside ``box`` and black elsewhere."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encode(image, fmt)).decode()


def rgb_pixels(data: bytes) -> np.ndarray:
    """The RGB pixels of an encoded picture, as signed integers (differences stay exact)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# -- jobs on a runner (SQLite, a local folder, the tiny pipeline: the unit ``env`` fixture) --


def make_runner(env: dict[str, Any], storage: Any = None, interval: float = 0.0) -> JobRunner:
    """A JobRunner on the unit ``env`` (its storage unless ``storage``), loading on the CPU."""
    from easel.worker.engine.device import DevicePlan
    from easel.worker.engine.pipelines import PipelineCache, load_pipeline
    from easel.worker.engine.runner import JobRunner

    cache = PipelineCache(loader=lambda spec: load_pipeline(spec, DevicePlan("cpu", "float32")))
    return JobRunner(
        sessions=env["sessions"],
        registry=env["registry"],
        storage=storage or env["storage"],
        cache=cache,
        worker_id="test:1",
        models=["tiny-sd"],
        progress_interval=interval,
    )


def enqueue(env: dict[str, Any], **fields: Any) -> str:
    """A queued job (a 3-step "a cat" unless ``fields`` say otherwise) in ``env``'s database: its id."""
    from easel.shared.jobs import create_job
    from easel.shared.schemas import parse_job_request, resolve_job

    resolved = resolve_job(
        parse_job_request({"prompt": "a cat", "steps": 3, **fields}), env["registry"], env["settings"]
    )
    with env["sessions"]() as session:
        job = create_job(session, resolved)
        session.commit()
        return job.id


def fetch(env: dict[str, Any], job_id: str) -> Job:
    with env["sessions"]() as session:
        return session.get(Job, job_id)


# -- rows committed straight to a database ---------------------------------------------------


def insert_job(sessions: Callable[[], Session], age: float = 0.0, **fields: Any) -> str:
    """A ``job_row(**fields)`` created ``age`` seconds ago, committed through ``sessions``: its id."""
    with sessions() as session:
        job = job_row(created_at=utcnow() - timedelta(seconds=age), **fields)
        session.add(job)
        session.commit()
        return job.id


def worker_row(worker_id: str, models: list[str], age: float = 0.0, stopped: bool = False) -> Worker:
    """A CPU worker's heartbeat row serving ``models``, last seen ``age`` seconds ago (and
    stopped then where ``stopped``)."""
    seen = utcnow() - timedelta(seconds=age)
    times = {"started_at": seen, "last_seen_at": seen, "stopped_at": seen if stopped else None}
    return Worker(id=worker_id, hostname="h", models=models, device="cpu", **times)


# -- what the web tier recorded ------------------------------------------------------------


def migrated_settings(**fields: Any) -> Settings:
    """``Settings(**fields)`` with its database migrated to the latest revision."""
    from easel.migrations.upgrade import upgrade

    settings = Settings(**fields)
    upgrade(settings.database_url)
    return settings


def make_key(settings: Settings, name: str = "alice", admin: bool = False) -> str:
    """A new API key named ``name`` (an admin's where ``admin``): its secret token."""
    from easel.shared.db import session_scope
    from easel.web.keys import create_key

    with session_scope(settings.database_url) as session:
        return create_key(session, name, admin)[1]


def counts(settings: Settings) -> tuple[int, int]:
    """(jobs in the database, messages waiting in the embedded SQLite broker). That broker
    carries webhook deliveries only (no wake-ups: ``broker_wakes_workers``)."""
    jobs = create_engine(settings.database_url)
    with jobs.connect() as conn:
        n_jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    jobs.dispose()
    broker_db = settings.home / "broker.db"
    n_messages = 0
    if broker_db.exists():
        broker = create_engine(f"sqlite:///{broker_db}")
        with broker.connect() as conn:
            tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
            if "kombu_message" in tables:
                n_messages = conn.execute(text("SELECT count(*) FROM kombu_message")).scalar_one()
        broker.dispose()
    return n_jobs, n_messages


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus exposition, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, or ``None`` when the exposition has none."""
    return samples.get((name, tuple(sorted(labels.items()))))


def simultaneous_statuses(
    app: Any, body: dict[str, Any], headers: dict[str, str], count: int = 8
) -> list[int]:
    """The status codes of ``count`` POSTs of ``body`` to ``/api/v1/jobs`` on ``app``, sent
    at once (each thread waits at a barrier), sorted."""
    import threading

    barrier = threading.Barrier(count)
    statuses: list[int] = []

    def submit() -> None:
        with app.test_client() as client:
            barrier.wait()
            statuses.append(client.post("/api/v1/jobs", json=body, headers=headers).status_code)

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return sorted(statuses)


def inputs_in_storage_and_rows(settings: Settings) -> tuple[set[str], set[str]]:
    """The stored job inputs under ``settings``' local storage folder, and the input keys
    its job rows name: equal when no submission left an input behind."""
    from sqlalchemy import select
    from sqlalchemy.orm import sessionmaker

    from easel.shared.db import engine_for
    from easel.shared.storage import LocalStorage, storage_from_settings

    storage = storage_from_settings(settings)
    assert isinstance(storage, LocalStorage)
    stored = {path.relative_to(storage.root).as_posix() for path in storage.root.rglob("input-*.png")}
    with sessionmaker(engine_for(settings.database_url))() as session:
        named = set(session.scalars(select(Job.input_key).where(Job.input_key.is_not(None))))
    return stored, named


class ManualTimers:
    """A fake clock and the wake-ups it has scheduled, fired by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None]]] = []

    def schedule(self, delay: float, call: Callable[[], None]) -> None:
        self.due.append((round(self.now + delay, 6), call))

    def fire(self) -> None:
        at, call = self.due.pop(0)
        self.now = at
        call()


# -- stacks of real processes ---------------------------------------------------------------

WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1rZXk="  # Standard Webhooks' form
STACK_SETTINGS = {
    "EASEL_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "EASEL_WEBHOOK_MAX_ATTEMPTS": "3",
    "EASEL_WEBHOOK_BACKOFF_SECONDS": "0.3",
    "EASEL_WEBHOOK_TIMEOUT_SECONDS": "2",
    "EASEL_PROGRESS_INTERVAL_SECONDS": "0.2",
    "EASEL_HEARTBEAT_SECONDS": "1",
    "EASEL_PREVIEW_INTERVAL_SECONDS": "0.3",
    "EASEL_WEBHOOK_PROGRESS_SECONDS": "0.5",
    "EASEL_EVENT_STREAM_HEARTBEAT_SECONDS": "2",
    "EASEL_SUBMIT_RATE_LIMIT": "100000/minute",  # the suite submits fast; limits have their own tests
    "EASEL_RATE_LIMIT": "100000/minute",
    # One torch thread: a worker's two OpenMP threads beside the web server, the test process
    # and the browser on two cores run 5-10x slower than one (measured: 10 s against 1.5 s).
    "EASEL_CPU_THREADS": "1",
}


def make_stack(home: Path, tiny_model: Path, env: dict[str, str]) -> Stack:
    """A migrated stack in ``home`` with ``STACK_SETTINGS`` and ``env``, tiny-sd copied in;
    nothing started yet."""
    home.mkdir(parents=True, exist_ok=True)
    install_tiny_model(tiny_model, home)
    stack = Stack(env=base_env(home, **STACK_SETTINGS, **env), workdir=home)
    stack.migrate()
    return stack


def schema_diff(url: str) -> list[Any]:
    """What Alembic's autogenerate finds between the database at ``url`` and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from easel.shared.models import Base

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


# -- job rows written straight to a database -------------------------------------------------

JOB_ROW = {
    "type": "txt2img",
    "model": "tiny-sd",
    "status": "queued",
    "prompt": "p",
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance_scale": 7.5,
    "scheduler": "ddim",
    "seed": 1,
    "num_images": 1,
}


def job_row(**fields: Any) -> Job:
    """A ``Job`` row (not yet added to a session): a small queued txt2img of tiny-sd unless
    ``fields`` say otherwise."""
    return Job(**{**JOB_ROW, "timings": {}, **fields})


# -- upscale jobs on a runner that loads no model ----------------------------------------------


def upscale_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A ``make_runner`` env whose model is never loaded (upscale jobs need none, so none is
    built): SQLite, a local storage folder, a registry of one model."""
    from sqlalchemy.orm import sessionmaker

    from easel.migrations.upgrade import upgrade
    from easel.shared.db import make_engine
    from easel.shared.registry import ModelSource, ModelSpec, Registry
    from easel.shared.storage import LocalStorage

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    engine = make_engine(url)
    spec = ModelSpec(
        name="tiny-sd", source=ModelSource.DIRECTORY, location=str(tmp_path / "never-loaded"), family="sd"
    )
    yield {
        "sessions": sessionmaker(engine, expire_on_commit=False),
        "settings": Settings(home=tmp_path, database_url=url),
        "registry": Registry([spec], "tiny-sd"),
        "storage": LocalStorage(tmp_path / "out"),
    }
    engine.dispose()


def queue_upscale(env: dict[str, Any], image: Image.Image, **fields: Any) -> str:
    """A queued upscale job of ``image`` (validated against ``env``'s registry) with its
    input stored: its id."""
    from easel.shared.jobs import create_job, input_key
    from easel.shared.schemas import JobInputs, parse_job_request, resolve_job

    resolved = resolve_job(
        parse_job_request({"type": "upscale", **fields}),
        env["registry"],
        env["settings"],
        JobInputs(image=image),
    )
    with env["sessions"]() as session:
        job = create_job(session, resolved)
        job.input_key = input_key(job.id, "image")
        env["storage"].put(job.input_key, encode(image), "image/png")
        session.commit()
        return str(job.id)


def cli_submit_fields(monkeypatch: Any, args: list[str]) -> dict[str, Any]:
    """The job fields ``easel ARGS`` (a ``submit``) hands its API client: the client is a
    recorder here, so no server is needed; the command must exit 0."""
    from click.testing import CliRunner

    from easel import cli

    sent: dict[str, Any] = {}

    class Recorder:
        def submit(self, prompt: str | None, **fields: Any) -> dict[str, Any]:
            sent.update({k: v for k, v in {"prompt": prompt, **fields}.items() if v is not None})
            return {"id": "job1"}

    monkeypatch.setattr(cli, "_client", lambda url, key: Recorder())
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    return sent
