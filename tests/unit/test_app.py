"""The Flask app through its test client: factory, REST contract, errors, OpenAPI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from bench.processes import ROOT
from easel.migrations.upgrade import upgrade
from easel.shared.db import engine_for, session_scope
from easel.shared.settings import Settings
from easel.web import create_app
from tests.factories import counts, worker_row


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path, max_request_bytes=64 * 1024, auth_enabled=False)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def app(settings: Settings) -> Flask:
    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    return app


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as client:
        yield client


def test_factory_uses_given_settings(app: Flask, settings: Settings) -> None:
    assert app.extensions["easel"].settings is settings
    assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024


def test_submit_records_the_job(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/api/v1/jobs", json={"prompt": "a cat", "width": 64, "seed": 5})
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    assert body["status"] == "queued" and body["queue_position"] == 0
    assert body["params"]["seed"] == 5 and body["params"]["height"] == 256
    assert body["progress"] == {"step": 0, "total": 20, "fraction": 0.0}
    assert body["outputs"] == [] and body["error"] is None
    assert counts(settings) == (1, 0)  # the embedded broker carries no wake-ups: workers poll
    again = client.get(response.headers["Location"]).get_json()
    assert again["id"] == body["id"] and again["status"] == "queued"


def test_multipart_submission(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/jobs", data={"prompt": "a dog", "steps": "3", "seed": ""}, content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["params"]["steps"] == 3


def test_queue_position_counts_jobs_ahead(client: FlaskClient) -> None:
    ids = [client.post("/api/v1/jobs", json={"prompt": f"p{i}"}).get_json()["id"] for i in range(3)]
    positions = [client.get(f"/api/v1/jobs/{i}").get_json()["queue_position"] for i in ids]
    assert positions == [0, 1, 2]


@contextmanager
def statements(settings: Settings) -> Iterator[list[str]]:
    """The SQL statements the app sends to its database while the block runs."""
    engine = engine_for(settings.database_url)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def reads_of(table: str, seen: list[str]) -> int:
    return sum(
        1 for statement in seen if statement.startswith("SELECT") and f"FROM {table} " in f"{statement} "
    )


def test_a_submit_describes_the_job_it_records_without_reading_it_back(
    client: FlaskClient, settings: Settings
) -> None:
    """The job object of a submit is made as the insert commits: the job and its (no)
    outputs are not read back, and its position and estimate read the live workers once
    and the queue ahead of it in one statement."""
    with session_scope(settings.database_url) as session:
        session.add(worker_row("w1", []))  # a live worker, so the estimate is computed
    client.post("/api/v1/jobs", json={"prompt": "first"})
    with statements(settings) as seen:
        response = client.post("/api/v1/jobs", json={"prompt": "second"}, headers={"Idempotency-Key": "k-2"})
    body = response.get_json()
    assert response.status_code == 202 and body["queue_position"] == 1 and body["eta_seconds"] > 0
    assert sum(1 for statement in seen if statement.startswith("INSERT INTO jobs ")) == 1
    assert reads_of("job_outputs", seen) == 0 and reads_of("workers", seen) == 1
    # The replay lookup, the cap (held: with nothing to decode, no early check), the cost
    # figures and the line.
    assert reads_of("jobs", seen) == 4, seen
    replay = client.post("/api/v1/jobs", json={"prompt": "second"}, headers={"Idempotency-Key": "k-2"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json()["id"] == body["id"]


def test_a_page_of_jobs_reads_the_workers_and_cost_figures_once(
    client: FlaskClient, settings: Settings
) -> None:
    """Listing queued jobs costs one statement per job (its line) on top of a fixed few."""
    with session_scope(settings.database_url) as session:
        session.add(worker_row("w1", []))

    def page_reads(size: int) -> list[str]:
        with statements(settings) as seen:
            page = client.get(f"/api/v1/jobs?limit={size}").get_json()["jobs"]
        assert len(page) == size and all(job["eta_seconds"] > 0 for job in page)
        return seen

    for i in range(6):
        client.post("/api/v1/jobs", json={"prompt": f"p{i}"})
    three, six = page_reads(3), page_reads(6)
    assert reads_of("workers", three) == reads_of("workers", six) == 1
    assert len(six) - len(three) == 3


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "status", "field", "value"),
    [
        ({"prompt": "x", "width": 65}, 422, "width", 65),
        ({"prompt": "x", "steps": 1000}, 422, "steps", 1000),
        ({"prompt": "x", "guidance_scale": -1}, 422, "guidance_scale", -1),
        ({"prompt": "x", "scheduler": "k_lms_magic"}, 422, "scheduler", "k_lms_magic"),
        ({"prompt": "x", "model": "nope"}, 422, "model", "nope"),
        ({"prompt": "x", "num_images": 9}, 422, "num_images", 9),
        ({"prompt": "x" * 2001}, 422, "prompt", "x" * 200 + "..."),
        ({"width": 64}, 422, "prompt", None),
    ],
)
def test_bad_fields_are_rejected_and_nothing_is_enqueued(
    client: FlaskClient, settings: Settings, payload: dict[str, Any], status: int, field: str, value: Any
) -> None:
    response = client.post("/api/v1/jobs", json=payload)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == "validation_error"
    detail = next(d for d in error["details"] if d["field"] == field)
    assert detail["value"] == value
    assert field in error["message"]
    assert counts(settings) == (0, 0)


def test_malformed_json(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/api/v1/jobs", data=b'{"prompt": "x",', content_type="application/json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "bad_request" and "not valid JSON" in error["message"]
    assert counts(settings) == (0, 0)


def test_json_that_is_not_an_object(client: FlaskClient) -> None:
    response = client.post("/api/v1/jobs", data=b"[1, 2]", content_type="application/json")
    assert response.status_code == 400
    assert "must be a JSON object, got list" in error_of(response)["message"]


def test_wrong_content_type(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/api/v1/jobs", data="prompt=x", content_type="text/plain")
    assert response.status_code == 415
    error = error_of(response)
    assert "'text/plain'" in error["message"] and error["details"][0]["value"] == "text/plain"
    assert counts(settings) == (0, 0)


def test_body_too_large(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/api/v1/jobs", json={"prompt": "x" * 70_000})
    assert response.status_code == 413
    assert "65536 bytes" in error_of(response)["message"]
    assert counts(settings) == (0, 0)


def test_unknown_job_and_output(client: FlaskClient) -> None:
    response = client.get("/api/v1/jobs/does-not-exist")
    assert response.status_code == 404 and "'does-not-exist'" in error_of(response)["message"]
    response = client.get("/api/v1/jobs/does-not-exist/outputs/0")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert error_of(client.get("/api/v1/nowhere"))["code"] == "not_found"
    assert error_of(client.delete("/api/v1/jobs"))["code"] == "method_not_allowed"


def test_models_endpoint(client: FlaskClient) -> None:
    models = client.get("/api/v1/models").get_json()["models"]
    assert [m["name"] for m in models] == ["demo-shapes", "tiny-sd"]
    tiny = models[1]
    assert tiny["default"] is True and tiny["types"] == ["txt2img", "img2img", "inpaint"]
    assert tiny["family"] == {
        "name": "sd",
        "title": "Stable Diffusion 1.x / 2.x",
        "guidance": "cfg",
        "negative_prompt": True,
    }
    assert tiny["schedulers"] == ["ddim", "euler", "euler_a", "dpmpp_2m", "lcm", "pndm", "unipc"]
    assert tiny["limits"]["min_size"] == 64 and tiny["limits"]["max_size"] == 512
    assert tiny["limits"]["size_multiple"] == 8


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["database"] == "ok"


def test_readiness_names_what_is_down(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://127.0.0.1:1/0", auth_enabled=False)
    upgrade(settings.database_url)
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("unavailable")


def test_openapi_document_is_valid_and_generated(client: FlaskClient) -> None:
    from openapi_spec_validator import validate

    document = client.get("/api/v1/openapi.json").get_json()
    validate(document)
    schemas = document["components"]["schemas"]
    job_create = schemas["JobCreate"]["properties"]
    assert job_create["width"]["anyOf"][0]["maximum"] == 8192
    assert set(schemas["JobView"]["required"]) >= {"id", "status", "progress", "outputs"}
    assert "/api/v1/jobs/{job_id}/outputs/{index}" in document["paths"]


def test_web_tier_never_imports_torch() -> None:
    code = (
        "import sys; from easel.web import create_app; create_app(); "
        "import easel.web.api, easel.web.pages, easel.cli; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(json.dumps(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        check=True,
        env={"EASEL_HOME": str(ROOT / "var" / "import-check"), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_form_shows_errors_next_to_fields(client: FlaskClient, settings: Settings) -> None:
    response = client.post("/", data={"prompt": "", "width": "70", "steps": "4"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="prompt-error"' in html and 'id="width-error"' in html
    assert "must be a multiple of 8" in html and "(got 70)" in html
    assert 'value="70"' in html  # what the user typed is kept
    assert counts(settings) == (0, 0)


def test_form_submit_redirects_to_job_page(client: FlaskClient) -> None:
    response = client.post("/", data={"prompt": "a cat", "width": "", "steps": "4"})
    assert response.status_code == 303
    page = client.get(response.headers["Location"])
    assert page.status_code == 200 and b"job.js" in page.data
    assert client.get("/jobs/unknown").status_code == 404
