"""One tenant cannot take the service down (issue 30): webhook slots, lockouts, leaks.

Real parts: webhook receivers are HTTP servers on loopback sockets, the app is the real
Flask app on SQLite with authentication on, and the limits are the real counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import engine_for
from easel.shared.models import Job, JobStatus
from easel.shared.queue import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE
from easel.shared.settings import Settings
from easel.web import create_app
from easel.worker.metrics import WEBHOOK_DELIVERIES
from easel.worker.tasks import make_webhook_app
from easel.worker.webhooks import OwnerBusy, OwnerSlots, WebhookDeliverer, post_pinned
from tests.factories import insert_job, make_key
from tests.webhook_receiver import Receiver, Trickler

SMALL_JOB = {"prompt": "p", "width": 64, "height": 64, "steps": 1}
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def webhook_db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    yield sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    engine_for(settings.database_url).dispose()


def finished_job(sessions: sessionmaker[Session], url: str, owner: str) -> str:
    return insert_job(sessions, status=JobStatus.SUCCEEDED.value, webhook_url=url, owner_id=owner)


# ---- webhook delivery: a deadline per attempt, slots shared between owners ---------------


@pytest.mark.parametrize("every", [0.4, 0.07])
def test_a_trickling_receiver_is_cut_at_the_attempt_deadline(every: float) -> None:
    """A status line sent a byte every 0.4 s never trips a per-read timeout; the
    attempt's wall-clock deadline (1 s) ends it anyway. At 0.07 s a byte the cut falls
    inside "HTTP/1.1 200 OK": a status line cut short is no answer either."""
    trickler = Trickler(every)
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="deadline"):
            post_pinned(trickler.url, b"{}", {}, 1.0, allow_private=True)
        assert time.monotonic() - started < 2.5
        assert trickler.accepted == 1
    finally:
        trickler.stop()


def test_a_trickled_delivery_fails_and_is_recorded(
    webhook_db: sessionmaker[Session], trickler: Trickler
) -> None:
    job_id = finished_job(webhook_db, trickler.url, "owner-a")
    deliverer = WebhookDeliverer(webhook_db, SECRET, "http://easel.test", timeout=1.0, allow_private=True)
    started = time.monotonic()
    assert deliverer.deliver(job_id) is False
    assert time.monotonic() - started < 2.5
    with webhook_db() as session:
        job = session.get(Job, job_id)
        assert job is not None and "deadline" in (job.webhook_error or "")


def test_one_owners_slow_receivers_hold_only_its_own_share_of_slots(
    webhook_db: sessionmaker[Session], trickler: Trickler, receiver: Receiver
) -> None:
    """Owner A's receiver trickles; A gets one slot (the cap), its next delivery is
    deferred at once rather than taking another thread, and owner B's lands meanwhile."""
    deliverer = WebhookDeliverer(
        webhook_db, SECRET, "http://easel.test", timeout=3.0, allow_private=True, slots=OwnerSlots(1)
    )
    slow = [finished_job(webhook_db, trickler.url, "owner-a") for _ in range(2)]
    fast = finished_job(webhook_db, f"{receiver.url}/b", "owner-b")
    outcome: list[bool | None] = []
    holder = threading.Thread(target=lambda: outcome.append(deliverer.deliver(slow[0])))
    holder.start()
    deadline = time.monotonic() + 2
    while deliverer.slots.busy("owner-a") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert deliverer.slots.busy("owner-a") == 1
    started = time.monotonic()
    with pytest.raises(OwnerBusy):
        deliverer.deliver(slow[1])
    assert deliverer.deliver(fast) is True
    assert time.monotonic() - started < 1.0  # B never waited for A's receiver
    assert [d.path for d in receiver.deliveries] == ["/b"]
    holder.join(5)
    assert outcome == [False] and deliverer.slots.busy("owner-a") == 0


def test_a_deferred_delivery_is_sent_again_as_the_same_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trickler: Trickler
) -> None:
    """The task answers ``OwnerBusy`` by sending the message again shortly, keeping its
    retry count (a deferral is not a failed attempt)."""
    settings = Settings(home=tmp_path, webhook_secret=SECRET, webhook_allow_private=True)
    upgrade(settings.database_url)
    sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    job_id = finished_job(sessions, trickler.url, "owner-a")
    app = make_webhook_app(settings.model_copy(update={"webhook_concurrency_per_owner": 1}))
    task = app.tasks[DELIVER_WEBHOOK_TASK]
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(app, "send_task", lambda name, **options: sent.append((name, options)))
    deliverer = next(  # the task's own deliverer, from its closure
        cell.cell_contents
        for cell in task.run.__closure__ or ()
        if isinstance(cell.cell_contents, WebhookDeliverer)
    )
    deferred = WEBHOOK_DELIVERIES.labels(event="completed", outcome="deferred")
    before = deferred._value.get()
    assert deliverer.slots.take("owner-a")  # another delivery of owner A holds its slot
    try:
        assert task.apply(args=(job_id, "completed"), retries=3).get() is None
    finally:
        deliverer.slots.give("owner-a")
    assert deferred._value.get() == before + 1  # counted as deferred, not as an attempt
    assert sent == [
        (
            DELIVER_WEBHOOK_TASK,
            {"args": (job_id, "completed"), "countdown": 1.0, "retries": 3, "queue": WEBHOOK_QUEUE},
        )
    ]
    assert trickler.accepted == 0
    engine_for(settings.database_url).dispose()


# ---- failed authentications never block a valid key; the client behind a proxy --------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path, auth_enabled=True, auth_failure_limit="3/minute")
    upgrade(settings.database_url)
    return settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_failures_from_an_address_never_refuse_a_valid_key_from_it(settings: Settings) -> None:
    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False
    key = make_key(settings)
    shared = {"REMOTE_ADDR": "203.0.113.7"}
    with app.test_client() as client:
        statuses = [
            client.get("/api/v1/jobs", headers=bearer(f"easel_bad_{n}"), environ_base=shared).status_code
            for n in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        assert client.get("/api/v1/jobs", headers=bearer(key), environ_base=shared).status_code == 200
        assert client.post("/login", data={"api_key": key}, environ_base=shared).status_code == 303
        assert client.get("/api/v1/jobs", environ_base=shared).status_code == 200  # the session
        refused = client.post("/login", data={"api_key": "easel_bad"}, environ_base=shared)
        assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_trusted_proxy_hops_limit_the_client_not_the_proxy(settings: Settings) -> None:
    """Behind one proxy every request comes from the proxy's address; with
    EASEL_TRUSTED_PROXY_HOPS=1 the limit counts the client named in X-Forwarded-For."""
    proxy = {"REMOTE_ADDR": "10.0.0.2"}

    def forwarded(client_address: str) -> dict[str, str]:
        return {"X-Forwarded-For": client_address}

    untrusting = create_app(settings)
    with untrusting.test_client() as client:
        for _ in range(3):
            client.get("/api/v1/jobs", headers=forwarded("198.51.100.1"), environ_base=proxy)
        other = client.get("/api/v1/jobs", headers=forwarded("198.51.100.2"), environ_base=proxy)
        assert other.status_code == 429  # without the setting: one address for everyone

    trusting = create_app(
        settings.model_copy(update={"trusted_proxy_hops": 1, "auth_failure_limit": "3/hour"})
    )
    with trusting.test_client() as client:
        statuses = [
            client.get("/api/v1/jobs", headers=forwarded("198.51.100.3"), environ_base=proxy).status_code
            for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        other = client.get("/api/v1/jobs", headers=forwarded("198.51.100.4"), environ_base=proxy)
        assert other.status_code == 401  # its own count, not the first client's
        # Only the last hop is trusted: a forged entry before it changes nothing.
        forged = client.get(
            "/api/v1/jobs", headers=forwarded("198.51.100.9, 198.51.100.3"), environ_base=proxy
        )
        assert forged.status_code == 429


# ---- webhook URLs: shape, credentials, metadata -------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:0/", "port 0"),
        ("http:///x", "no host"),
        ("http://user:secret@hooks.example/x", "credentials"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),  # NAT64 of 169.254.169.254
    ],
)
def test_webhook_urls_refused_even_with_private_addresses_allowed(
    settings: Settings, url: str, says: str
) -> None:
    app = create_app(settings.model_copy(update={"webhook_secret": SECRET, "webhook_allow_private": True}))
    key = make_key(settings)
    with app.test_client() as client:
        response = client.post("/api/v1/jobs", json={**SMALL_JOB, "webhook_url": url}, headers=bearer(key))
        assert response.status_code == 422, response.get_data(as_text=True)
        details = response.get_json()["error"]["details"]
        assert [d["field"] for d in details] == ["webhook_url"] and says in details[0]["message"]
        fine = client.post(
            "/api/v1/jobs", json={**SMALL_JOB, "webhook_url": "http://127.0.0.1:9/hook"}, headers=bearer(key)
        )
        assert fine.status_code == 202, fine.get_data(as_text=True)


@pytest.mark.parametrize(
    "url", ["http://[::ffff:169.254.169.254]/", "http://169.254.169.254/", "http://127.0.0.1:0/"]
)
def test_delivery_refuses_metadata_and_port_0_with_private_allowed(url: str) -> None:
    from easel.shared.netsafety import UnsafeUrl

    with pytest.raises(UnsafeUrl):
        post_pinned(url, b"{}", {}, 1.0, allow_private=True)


def test_a_stored_url_with_credentials_is_shown_redacted() -> None:
    from easel.shared.jobs import redact_userinfo

    assert (
        redact_userinfo("https://u:p%40ss@hooks.example:8443/x?y=1") == "https://***@hooks.example:8443/x?y=1"
    )
    assert redact_userinfo("https://hooks.example/x") == "https://hooks.example/x"


# ---- errors tell tenants what they can act on ---------------------------------------------


def test_a_model_load_failure_shows_its_owner_no_path_and_its_admin_the_detail(settings: Settings) -> None:
    from easel.shared.errors import ModelLoadError
    from easel.worker.engine.runner import public_error

    detail = "cannot load LoRA 'ink' from '/srv/models/loras/ink.safetensors': HeaderTooLarge"
    error = ModelLoadError(detail, "LoRA 'ink' cannot be loaded on this server (submit without it)")
    message, kept = public_error(error)
    assert kept == detail and "/srv" not in message and "HeaderTooLarge" not in message
    owner, admin = make_key(settings, "owner"), make_key(settings, "ops", admin=True)
    sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    with sessions() as session:
        from easel.shared.models import ApiKey

        owner_id = next(k.id for k in session.query(ApiKey).all() if k.name == "owner")
    job_id = insert_job(
        sessions,
        status=JobStatus.FAILED.value,
        owner_id=owner_id,
        error_code="model_load_error",
        error_message=message,
        timings={"run_seconds": 0.1, "error_detail": detail},
    )
    app = create_app(settings)
    with app.test_client() as client:
        seen = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(owner)).get_json()
        assert seen["error"] == {"code": "model_load_error", "message": message}
        assert "/srv" not in str(seen) and "error_detail" not in seen["timings"]
        page = client.get("/admin", headers=bearer(admin)).get_data(as_text=True)
        assert "/srv/models/loras/ink.safetensors" in page


# ---- small ones ----------------------------------------------------------------------------


def test_nested_lora_tags_leave_no_tag_in_the_prompt() -> None:
    from easel.shared.adapters import split_lora_tags

    prompt, loras = split_lora_tags("a cat <lora:<lora:a:1>:1> by the sea")
    assert prompt == "a cat by the sea" and "<lora" not in prompt
    assert loras[0] == {"name": "a", "weight": 1.0}


def test_openai_n_must_be_an_integer_and_size_ascii_digits() -> None:
    from easel.shared.errors import ValidationFailed
    from easel.shared.registry import Registry, demo_spec
    from easel.web.openai_api import job_fields, parse_size

    registry = Registry([demo_spec()], "demo-shapes")
    for n in (True, False, 2.0, "2"):
        with pytest.raises(ValidationFailed) as caught:
            job_fields({"prompt": "p", "n": n}, registry)
        assert caught.value.details[0]["field"] == "n"
    assert job_fields({"prompt": "p", "n": 2}, registry)[0]["num_images"] == 2
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in "512")  # FULLWIDTH DIGIT FIVE, ONE, TWO
    arabic = "".join(chr(0x0660 + int(d)) for d in "512")
    for size in (f"{fullwidth}x{fullwidth}", f"512x{fullwidth}", f"{arabic}x512"):
        with pytest.raises(ValidationFailed):
            parse_size(size)


def test_a1111_init_images_must_be_a_list(settings: Settings) -> None:
    import base64

    app = create_app(settings)
    key = make_key(settings)
    auth = {"Authorization": "Basic " + base64.b64encode(f"u:{key}".encode()).decode()}
    with app.test_client() as client:
        response = client.post(
            "/sdapi/v1/img2img", json={"prompt": "p", "init_images": "notalist"}, headers=auth
        )
    assert response.status_code == 422
    (detail,) = response.get_json()["detail"]
    assert detail["loc"] == ["body", "init_images"] and "must be a list" in detail["msg"]
    assert "8 images" not in str(detail)
