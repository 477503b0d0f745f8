"""Cancel, listing, idempotent submit and ETA through the Flask app (no worker running)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.models import Job, utcnow
from easel.shared.settings import Settings
from easel.web import create_app
from easel.web.eta import QueueEstimates, cost_model
from easel.worker.signing import new_secret, receiver_secret, signed_headers, verify_signature
from tests.factories import migrated_settings, worker_row


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path, webhook_secret="s3cret", auth_enabled=False, webhook_allow_private=True
    )


def submit(client: FlaskClient, **fields: object) -> dict:
    response = client.post("/api/v1/jobs", json={"prompt": "p", "width": 64, "height": 64, **fields})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def set_status(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_cancel_queued_job(client: FlaskClient) -> None:
    job = submit(client)
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "canceled" and body["finished_at"] and body["queue_position"] is None
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already finished (canceled)" in again.get_json()["error"]["message"]


def test_cancel_running_job_only_asks(client: FlaskClient, settings: Settings) -> None:
    job = submit(client)
    set_status(settings, job["id"], status="running", worker_id="w")
    body = client.post(f"/api/v1/jobs/{job['id']}/cancel").get_json()
    assert body["status"] == "running" and body["cancel_requested"] is True


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_finished_job_is_409(client: FlaskClient, settings: Settings, status: str) -> None:
    job = submit(client)
    set_status(settings, job["id"], status=status, finished_at=utcnow())
    response = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409 and response.get_json()["error"]["details"][0]["value"] == status


def test_cancel_unknown_job_is_404(client: FlaskClient) -> None:
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_pagination_returns_every_job_exactly_once_newest_first(client: FlaskClient) -> None:
    created = [submit(client, seed=i)["id"] for i in range(7)]
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        body = client.get(f"/api/v1/jobs?limit=3&cursor={cursor}").get_json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        if not body["next_cursor"]:
            break
        cursor = body["next_cursor"]
    assert pages == 3 and seen == list(reversed(created))


def test_listing_filters(client: FlaskClient, settings: Settings) -> None:
    jobs = [submit(client)["id"] for _ in range(3)]
    set_status(settings, jobs[1], status="succeeded")
    body = client.get("/api/v1/jobs?status=succeeded").get_json()
    assert [j["id"] for j in body["jobs"]] == [jobs[1]]
    assert len(client.get("/api/v1/jobs?type=txt2img").get_json()["jobs"]) == 3
    assert client.get("/api/v1/jobs?type=img2img").get_json()["jobs"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("type=video", "type"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=%%%", "cursor"),
        ("limit=2&=null", "(empty name)"),  # the schema allows no other query parameter
        ("stauts=queued", "stauts"),
    ],
)
def test_listing_rejects_bad_parameters(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/api/v1/jobs?{query}")
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == field


def test_same_idempotency_key_creates_one_job(client: FlaskClient) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/api/v1/jobs", json={"prompt": "p"}, headers=headers)
    second = client.post("/api/v1/jobs", json={"prompt": "p"}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] == second.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(client.get("/api/v1/jobs").get_json()["jobs"]) == 1
    other = client.post("/api/v1/jobs", json={"prompt": "different"}, headers=headers)
    assert other.status_code == 409 and "order-42" in other.get_json()["error"]["message"]
    assert (
        client.post("/api/v1/jobs", json={"prompt": "p"}, headers={"Idempotency-Key": "x" * 256}).status_code
        == 422
    )


def test_webhook_url_must_be_http_and_enabled(client: FlaskClient, tmp_path: Path) -> None:
    response = client.post("/api/v1/jobs", json={"prompt": "p", "webhook_url": "ftp://example.test/x"})
    assert response.status_code == 422
    assert response.get_json()["error"]["details"][0]["field"] == "webhook_url"
    disabled = Settings(home=tmp_path / "off", auth_enabled=False)
    upgrade(disabled.database_url)
    off = (
        create_app(disabled)
        .test_client()
        .post("/api/v1/jobs", json={"prompt": "p", "webhook_url": "http://127.0.0.1:9/hook"})
    )
    assert off.status_code == 422 and "EASEL_WEBHOOK_SECRET" in off.get_json()["error"]["message"]
    ok = submit(client, webhook_url="https://example.test/hook")
    assert ok["webhook"] == {
        "url": "https://example.test/hook",
        "events": ["completed"],
        "attempts": 0,
        "delivered_at": None,
        "last_error": None,
    }


def test_eta_uses_history_and_live_workers(client: FlaskClient, settings: Settings) -> None:
    done = submit(client, steps=10)
    set_status(
        settings,
        done["id"],
        status="succeeded",
        finished_at=utcnow(),
        timings={"generate_seconds": 4.0, "run_seconds": 4.5, "load_seconds": 0.0},
    )
    queued = [submit(client, steps=10) for _ in range(2)]
    # No worker serves tiny-sd yet: the jobs wait for one, with no estimate.
    assert all(q["waiting_for_worker"] and q["eta_seconds"] is None for q in queued)

    def add_worker(name: str) -> None:
        with session_scope(settings.database_url) as session:
            session.add(worker_row(name, ["tiny-sd"]))

    add_worker("a")
    # 10 steps of 64x64 took 4 s: 4 / (10 * 0.004096) s per step-megapixel; 0.5 s overhead.
    first, second = (client.get(f"/api/v1/jobs/{q['id']}").get_json() for q in queued)
    assert not first["waiting_for_worker"] and not second["waiting_for_worker"]
    assert first["eta_seconds"] == pytest.approx(4.5, rel=0.01)
    assert second["eta_seconds"] == pytest.approx(9.0, rel=0.01)
    add_worker("b")
    later = client.get(f"/api/v1/jobs/{queued[1]['id']}").get_json()
    assert later["eta_seconds"] == pytest.approx(4.5 / 2 + 4.5, rel=0.01)


def test_signature_round_trip() -> None:
    """Standard Webhooks: the library verifies what Easel signs, for a whsec_ secret and for
    an older plain one (through ``receiver_secret``); Easel's own check agrees."""
    from standardwebhooks import Webhook

    body = b'{"id": "x"}'
    for secret in (new_secret(), "plain-old-secret"):
        headers = signed_headers(secret, "msg-1", body)
        assert Webhook(receiver_secret(secret)).verify(body, headers) == {"id": "x"}
    headers = signed_headers("k", "msg-1", body, now=1000)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_signature("k", body, headers, now=1010)
    assert not verify_signature("k", body + b" ", headers, now=1010)
    assert not verify_signature("k", body, headers, now=2000)
    assert not verify_signature("k", body, {**headers, "webhook-id": "msg-2"}, now=1010)
    assert not verify_signature("k", body, {**headers, "webhook-timestamp": "soon"}, now=1000)


def megapixel_job(status: str, **fields: object) -> Job:
    """A 1000x1000, 10-step job of model ``m`` (one megapixel: easy arithmetic)."""
    defaults: dict[str, object] = {
        "type": "txt2img",
        "model": "m",
        "prompt": "p",
        "negative_prompt": "",
        "width": 1000,
        "height": 1000,
        "steps": 10,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "seed": 1,
        "num_images": 1,
        "timings": {},
    }
    return Job(**{**defaults, "status": status, **fields})


def test_eta_learns_the_per_image_cost_of_batched_jobs(settings: Settings) -> None:
    batch = {"generate_seconds": 8.0, "run_seconds": 9.0, "batch_images": 4, "batch_jobs": 3}
    with session_scope(settings.database_url) as session:
        # three jobs of one batch of 4 images: 8 s in the call, 1 s around it
        for images in (2, 1, 1):
            session.add(megapixel_job("succeeded", num_images=images, finished_at=utcnow(), timings=batch))
    with session_scope(settings.database_url) as session:
        model = cost_model(session, "m", history=20)
    assert model.rate == pytest.approx(8.0 / (10 * 1.0 * 4))  # seconds per step-megapixel-image
    assert model.overhead == pytest.approx(1.0 / 3)
    with session_scope(settings.database_url) as session:
        running = megapixel_job("running", progress_step=5, progress_total=10, batch_size=4)
        session.add(running)
        session.flush()
        # Half its steps left, for the 4 images its call denoises: half of the 8 s call.
        assert QueueEstimates(session, 20, 30.0).place(running).eta_seconds == pytest.approx(4.0)
