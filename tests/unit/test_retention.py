"""Retention on SQLite and a local folder: what is due goes, what is not stays, twice over.

S3 and PostgreSQL are in ``tests/integration/test_retention_services.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import make_engine
from easel.shared.models import Job, JobOutput, JobStatus, utcnow
from easel.shared.retention import Policy, Pruner, output_key, prune, take_lease
from easel.shared.settings import Settings
from easel.shared.stats import record_finished
from easel.shared.storage import LocalStorage
from easel.web import create_app
from tests.factories import job_row

DAY = timedelta(days=1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path, auth_enabled=False)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.home / "outputs")  # where the app's default storage_url points


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def add_job(
    sessions: sessionmaker[Session],
    storage: LocalStorage,
    status: JobStatus,
    age_days: float | None = None,
    images: int = 1,
    inputs: bool = False,
    control: bool = False,
) -> str:
    """A job in ``status`` that finished ``age_days`` ago (when final), its outputs (when
    it succeeded) and inputs (image and mask; ``control``: a ControlNet's image) stored,
    counted as its finishing transaction counts it."""
    now = utcnow()
    finished = now - timedelta(days=age_days) if status.is_terminal and age_days is not None else None
    started = finished - timedelta(seconds=2) if finished else None
    job = job_row(
        type="img2img" if inputs else "txt2img",
        status=status.value,
        seed=5,
        num_images=images,
        created_at=(started or now) - (timedelta(seconds=1) if status.is_terminal else DAY * 60),
        started_at=started if status is not JobStatus.QUEUED else None,
        finished_at=finished,
    )
    with sessions() as session:
        session.add(job)
        session.flush()
        if inputs:
            job.input_key = f"jobs/{job.id}/input-image.png"
            job.mask_key = f"jobs/{job.id}/input-mask.png"
            storage.put(job.input_key, b"image", "image/png")
            storage.put(job.mask_key, b"mask", "image/png")
        if control:
            job.control, job.control_key = (
                {"model": "edges", "scale": 1.0},
                f"jobs/{job.id}/input-control.png",
            )
            storage.put(job.control_key, b"control", "image/png")
        if status in (JobStatus.SUCCEEDED, JobStatus.RUNNING):  # a running job may have stored some
            for index in range(images):
                storage.put(output_key(job.id, index), b"png", "image/png")
                if status is JobStatus.SUCCEEDED:
                    session.add(
                        JobOutput(
                            job_id=job.id,
                            index=index,
                            seed=5 + index,
                            storage_key=output_key(job.id, index),
                            width=64,
                            height=64,
                            size_bytes=3,
                        )
                    )
        if finished is not None:
            record_finished(session, job, status, finished)
        session.commit()
        return job.id


def stored(storage: LocalStorage, job_id: str) -> list[str]:
    folder = storage.root / "jobs" / job_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_dry_run_lists_what_is_due_and_deletes_nothing(
    sessions: sessionmaker[Session], storage: LocalStorage
) -> None:
    old = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40, images=2, inputs=True)
    recent = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=1)
    listed: list[tuple[str, str, int]] = []
    report = prune(
        sessions, storage, Policy(30, 7, 35), dry_run=True, on_job=lambda *item: listed.append(item)
    )
    assert listed == [("rows", old, 4)]  # the row goes, with its 2 outputs, image and mask
    assert (report.rows, report.outputs, report.inputs, report.objects) == (1, 0, 0, 4)
    assert stored(storage, old) == ["0.png", "1.png", "input-image.png", "input-mask.png"]
    assert stored(storage, recent) == ["0.png"]
    with sessions() as session:
        assert session.get(Job, old).outputs_pruned_at is None
        assert len(session.scalars(select(Job)).all()) == 2
    # without row retention the same job is due for its outputs and its inputs
    listed.clear()
    prune(sessions, storage, Policy(30, 7, 0), dry_run=True, on_job=lambda *item: listed.append(item))
    assert listed == [("outputs", old, 2), ("inputs", old, 2)]
    assert stored(storage, old) == ["0.png", "1.png", "input-image.png", "input-mask.png"]


def test_pruned_outputs_answer_410_gone_and_the_job_says_so(
    sessions: sessionmaker[Session], storage: LocalStorage, client: FlaskClient
) -> None:
    old = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=31, images=2)
    recent = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=29)
    report = prune(sessions, storage, Policy(outputs_days=30, inputs_days=0))
    assert (report.outputs, report.rows, report.inputs) == (1, 0, 0)
    assert stored(storage, old) == [] and not (storage.root / "jobs" / old).exists()
    assert stored(storage, recent) == ["0.png"]

    gone = client.get(f"/api/v1/jobs/{old}/outputs/1")
    assert gone.status_code == 410
    error = gone.get_json()["error"]
    assert error["code"] == "gone" and "EASEL_RETENTION_OUTPUTS_DAYS=30" in error["message"]
    assert error["details"] == [{"field": "index", "message": "outputs deleted by retention", "value": 1}]
    assert client.get(f"/api/v1/jobs/{old}/outputs/7").status_code == 404  # never existed
    assert client.get(f"/api/v1/jobs/{recent}/outputs/0").status_code == 200

    job = client.get(f"/api/v1/jobs/{old}").get_json()
    assert job["outputs_pruned_at"] and [o["seed"] for o in job["outputs"]] == [5, 6]  # seeds stay
    assert client.get(f"/api/v1/jobs/{recent}").get_json()["outputs_pruned_at"] is None
    page = client.get(f"/jobs/{old}").get_data(as_text=True)
    assert 'id="pruned"' in page  # job.js fills it from outputs_pruned_at
    gallery = client.get("/gallery").get_data(as_text=True)
    assert "images deleted (retention)" in gallery


def test_pruned_inputs_answer_410_gone(
    sessions: sessionmaker[Session], storage: LocalStorage, client: FlaskClient
) -> None:
    old = add_job(sessions, storage, JobStatus.FAILED, age_days=8, inputs=True)
    assert prune(sessions, storage, Policy(outputs_days=0, inputs_days=7)).inputs == 1
    assert stored(storage, old) == []
    answer = client.get(f"/api/v1/jobs/{old}/inputs/mask")
    assert answer.status_code == 410 and answer.get_json()["error"]["code"] == "gone"
    assert client.get(f"/api/v1/jobs/{old}").get_json()["inputs_pruned_at"]


def test_the_control_image_of_a_txt2img_job_is_pruned_with_the_inputs(
    sessions: sessionmaker[Session], storage: LocalStorage, client: FlaskClient
) -> None:
    """A txt2img + ControlNet job has no input image, only its control image."""
    old = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=8, control=True)
    recent = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=6, control=True)
    plain = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=8)  # no inputs: not due
    report = prune(sessions, storage, Policy(outputs_days=0, inputs_days=7))
    assert (report.inputs, report.objects) == (1, 1)
    assert stored(storage, old) == ["0.png"] and stored(storage, recent) == ["0.png", "input-control.png"]
    assert client.get(f"/api/v1/jobs/{old}/inputs/control").status_code == 410
    assert client.get(f"/api/v1/jobs/{recent}/inputs/control").status_code == 200
    with sessions() as session:
        assert session.get(Job, plain).inputs_pruned_at is None


def test_finding_due_inputs_reads_the_partial_index(
    sessions: sessionmaker[Session], storage: LocalStorage
) -> None:
    """The inputs pass's query implies ix_jobs_inputs_due's predicate: SQLite can read it
    (``INDEXED BY`` fails with "no query solution" where it cannot)."""
    add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=8, control=True)
    engine = sessions.kw["bind"]
    captured: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "inputs_pruned_at IS NULL" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        assert prune(sessions, storage, Policy(outputs_days=0, inputs_days=7), dry_run=True).inputs == 1
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert captured
    with engine.connect() as connection:
        for statement, parameters in captured:
            assert "\nFROM jobs \n" in statement, statement
            forced = statement.replace("\nFROM jobs \n", "\nFROM jobs INDEXED BY ix_jobs_inputs_due\n", 1)
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + forced, parameters).all()
            assert "ix_jobs_inputs_due" in " ".join(str(row) for row in plan), plan


def test_prune_never_touches_queued_or_running_jobs(
    sessions: sessionmaker[Session], storage: LocalStorage
) -> None:
    """Even created 60 days ago, with everything at the shortest retention."""
    queued = add_job(sessions, storage, JobStatus.QUEUED, inputs=True)
    running = add_job(sessions, storage, JobStatus.RUNNING, images=2, inputs=True)
    tiny = Policy(outputs_days=1e-9, inputs_days=1e-9, rows_days=1e-9)
    report = prune(sessions, storage, tiny, now=utcnow() + DAY * 365)
    assert (report.rows, report.outputs, report.inputs, report.objects) == (0, 0, 0, 0)
    assert stored(storage, queued) == ["input-image.png", "input-mask.png"]
    assert stored(storage, running) == ["0.png", "1.png", "input-image.png", "input-mask.png"]
    with sessions() as session:
        for job_id, status in ((queued, "queued"), (running, "running")):
            job = session.get(Job, job_id)
            assert job.status == status and job.outputs_pruned_at is None and job.inputs_pruned_at is None


def test_a_second_pass_finds_nothing_and_an_interrupted_one_is_finished(
    sessions: sessionmaker[Session], storage: LocalStorage
) -> None:
    first = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40)
    policy = Policy(outputs_days=30, inputs_days=0)
    assert prune(sessions, storage, policy).outputs == 1
    again = prune(sessions, storage, policy)
    assert (again.outputs, again.objects) == (0, 0)
    # A pass that deleted the objects but stopped before recording it: the next one records it.
    cut_short = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40)
    storage.delete([output_key(cut_short, 0)])
    assert prune(sessions, storage, policy).outputs == 1
    with sessions() as session:
        assert session.get(Job, cut_short).outputs_pruned_at is not None
        assert session.get(Job, first).outputs_pruned_at is not None


def test_row_retention_deletes_rows_and_objects_but_not_the_counters(
    sessions: sessionmaker[Session], storage: LocalStorage, client: FlaskClient
) -> None:
    finished = "easel_jobs_finished_total"

    def count(status: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        exposition = client.get("/metrics").get_data(as_text=True)
        labels = {"status": status, "type": "txt2img", "model": "tiny-sd"}
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name == finished and sample.labels == labels:
                    return sample.value
        return None

    old = [add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=100, images=2) for _ in range(3)]
    canceled = add_job(sessions, storage, JobStatus.CANCELED, age_days=100)
    kept = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=10)
    before = count("succeeded"), count("canceled")
    assert before == (4, 1)
    report = prune(sessions, storage, Policy(outputs_days=0, inputs_days=0, rows_days=90), batch_size=2)
    assert report.rows == 4 and report.objects == 3 * 2 + 1  # canceled: the key it might have used
    with sessions() as session:
        assert session.scalars(select(Job.id)).all() == [kept]
        assert session.scalars(select(JobOutput.job_id)).all() == [kept]
    assert all(stored(storage, job_id) == [] for job_id in [*old, canceled])
    assert client.get(f"/api/v1/jobs/{old[0]}").status_code == 404
    assert (count("succeeded"), count("canceled")) == before  # counters never drop


def test_storage_delete_is_idempotent(storage: LocalStorage) -> None:
    storage.put("jobs/a/0.png", b"x", "image/png")
    storage.delete(["jobs/a/0.png", "jobs/a/1.png"])
    storage.delete(["jobs/a/0.png"])
    assert not (storage.root / "jobs" / "a").exists()


def test_one_worker_holds_the_prune_lease_per_interval(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert take_lease(session, "retention", "w1", 60)
        assert not take_lease(session, "retention", "w2", 60)
        assert not take_lease(session, "retention", "w1", 60)  # a new pass waits for the interval
        assert take_lease(session, "retention", "w1", 60, renew=True)  # a long pass keeps it
        assert not take_lease(session, "retention", "w2", 60, renew=True)
        later = utcnow() + timedelta(seconds=61)
        assert take_lease(session, "retention", "w2", 60, now=later)  # expired: another takes it


def test_pruners_on_two_workers_run_one_pass(sessions: sessionmaker[Session], storage: LocalStorage) -> None:
    job_id = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40)
    policy = Policy(outputs_days=30, inputs_days=0)
    first, second = (Pruner(sessions, storage, policy, holder=h, interval=3600) for h in ("w1", "w2"))
    report = first.run_once()
    assert report is not None and report.outputs == 1 and stored(storage, job_id) == []
    assert second.run_once() is None and first.run_once() is None


def test_the_periodic_prune_runs_by_itself(sessions: sessionmaker[Session], storage: LocalStorage) -> None:
    pruner = Pruner(sessions, storage, Policy(outputs_days=30, inputs_days=0), holder="w", interval=0.2)

    def wait(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert condition(), what

    pruner.start()
    try:
        for n in (1, 2):  # a pass, then another one after the interval
            job_id = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40)
            wait(lambda job_id=job_id: stored(storage, job_id) == [], f"job {n} pruned")
            wait(lambda n=n: pruner.passes >= n, f"pass {n} over")
    finally:
        pruner.stop()


def test_retention_is_off_for_rows_by_default() -> None:
    settings = Settings()
    assert Policy.from_settings(settings) == Policy(outputs_days=30, inputs_days=7, rows_days=0)
    assert settings.retention_interval_seconds > 0
    idle = Pruner(None, None, Policy(0, 0, 0), holder="w", interval=60)  # type: ignore[arg-type]
    idle.start()
    assert idle._thread is None  # nothing to keep: no thread


def test_easel_prune_dry_run_then_prune(
    sessions: sessionmaker[Session], storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from easel.cli import main
    from easel.shared.settings import get_settings

    old = add_job(sessions, storage, JobStatus.SUCCEEDED, age_days=40)
    monkeypatch.setenv("EASEL_HOME", str(storage.root.parent))  # the settings fixture's home
    get_settings.cache_clear()
    try:
        dry = CliRunner().invoke(main, ["prune", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert f"would prune outputs of job {old} (1 object(s))" in dry.output
        assert stored(storage, old) == ["0.png"]
        done = CliRunner().invoke(main, ["prune"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.output.splitlines()[-1])["outputs"] == 1
        assert stored(storage, old) == []
    finally:
        get_settings.cache_clear()
