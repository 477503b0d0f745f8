"""Routing as the web tier sees it: live workers per model, jobs waiting for a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from easel.shared.db import session_scope
from easel.shared.jobs import waiting_for_worker
from easel.shared.models import Job, JobStatus
from easel.shared.settings import Settings
from easel.shared.workers import live_workers, live_workers_by_model
from tests.factories import migrated_settings, worker_row

MODELS_FILE = """
[models.alpha]
source = "tiny"
[models.beta]
source = "tiny"
[models.gamma]
source = "tiny"
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS_FILE)
    return migrated_settings(
        home=tmp_path,
        auth_enabled=False,
        models_file=models_file,
        default_model="alpha",
        worker_lost_after_seconds=30,
    )


def add_worker(
    settings: Settings, worker_id: str, models: list[str], age: float = 0, stopped: bool = False
) -> None:
    with session_scope(settings.database_url) as session:
        session.add(worker_row(worker_id, models, age, stopped))


def test_live_workers_count_fresh_running_rows_serving_each_model(settings: Settings) -> None:
    add_worker(settings, "h:1", ["alpha"])
    add_worker(settings, "h:2", ["alpha", "beta"])
    add_worker(settings, "h:3", [])  # a row without models serves every model
    add_worker(settings, "h:4", ["alpha"], age=31)  # heartbeat too old: lost
    add_worker(settings, "h:5", ["beta"], stopped=True)  # shut down
    with session_scope(settings.database_url) as session:
        counts = live_workers_by_model(
            session, ["alpha", "beta", "gamma"], settings.worker_lost_after_seconds
        )
        assert counts == {"alpha": 3, "beta": 2, "gamma": 1}
        assert live_workers(session, "beta", settings.worker_lost_after_seconds) == 2


@pytest.mark.parametrize(
    ("status", "serving", "waiting"),
    [
        (JobStatus.QUEUED, 0, True),
        (JobStatus.QUEUED, 1, False),
        (JobStatus.QUEUED, None, False),  # not counted (e.g. a webhook payload): never claimed
        (JobStatus.RUNNING, 0, False),  # its worker may be gone, but it is not waiting for one
        (JobStatus.CANCELED, 0, False),
    ],
)
def test_waiting_for_worker_only_when_queued_and_unserved(
    status: JobStatus, serving: int | None, waiting: bool
) -> None:
    assert waiting_for_worker(Job(status=status.value, model="alpha"), serving) is waiting


def test_models_endpoint_counts_live_workers(client: FlaskClient, settings: Settings) -> None:
    add_worker(settings, "h:1", ["alpha"])
    add_worker(settings, "h:2", ["alpha", "beta"])
    add_worker(settings, "h:3", ["gamma"], age=60)
    models = {m["name"]: m for m in client.get("/api/v1/models").get_json()["models"]}
    assert {name: m["workers"] for name, m in models.items()} == {"alpha": 2, "beta": 1, "gamma": 0}


def test_job_of_an_unserved_model_waits_without_eta(client: FlaskClient, settings: Settings) -> None:
    add_worker(settings, "h:1", ["alpha"])
    served = client.post("/api/v1/jobs", json={"prompt": "p", "width": 64, "height": 64}).get_json()
    assert served["model"] == "alpha"
    assert served["waiting_for_worker"] is False and served["eta_seconds"] > 0
    job = client.post("/api/v1/jobs", json={"prompt": "p", "model": "gamma", "width": 64, "height": 64})
    body = job.get_json()
    assert job.status_code == 202
    assert body["waiting_for_worker"] is True and body["eta_seconds"] is None
    assert body["queue_position"] == 0  # still in line: the first a gamma worker will claim
    listed = client.get("/api/v1/jobs").get_json()["jobs"]
    assert {j["model"]: j["waiting_for_worker"] for j in listed} == {"alpha": False, "gamma": True}

    add_worker(settings, "h:2", ["gamma"])
    later = client.get(f"/api/v1/jobs/{body['id']}").get_json()
    assert later["waiting_for_worker"] is False and later["eta_seconds"] > 0

    canceled = client.post(f"/api/v1/jobs/{body['id']}/cancel").get_json()
    assert canceled["status"] == "canceled" and canceled["waiting_for_worker"] is False


def test_openapi_documents_the_routing_fields(client: FlaskClient) -> None:
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    assert "waiting_for_worker" in schemas["JobView"]["required"]
    assert schemas["JobView"]["properties"]["waiting_for_worker"]["type"] == "boolean"
    assert "workers" in schemas["ModelView"]["required"]
    assert schemas["ModelView"]["properties"]["workers"]["type"] == "integer"


def test_job_page_has_the_waiting_notice(client: FlaskClient) -> None:
    job = client.post("/api/v1/jobs", json={"prompt": "p", "model": "gamma", "width": 64, "height": 64})
    page = client.get(f"/jobs/{job.get_json()['id']}").get_data(as_text=True)
    assert 'id="waiting"' in page
    assert "waiting_for_worker" in client.get("/static/job.js").get_data(as_text=True)
