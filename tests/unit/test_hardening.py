"""Issue 16: what a probe of the running stack found, each closed and pinned by a test.

The rows of the issue are named in each test's docstring. These run in process
(Flask's test client, a real SQLite database, real sockets); the ones that need
several processes or PostgreSQL are in tests/integration/test_hardening_e2e.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy.orm import sessionmaker
from werkzeug.test import TestResponse

from easel.migrations.upgrade import upgrade
from easel.shared.db import engine_for
from easel.shared.errors import ValidationFailed
from easel.shared.images import load_image
from easel.shared.models import JobStatus
from easel.shared.netsafety import UnsafeUrl, check_public_url, is_public_address
from easel.shared.settings import Settings
from easel.shared.storage import LocalStorage
from easel.web import create_app
from easel.web.limits import SqlStorage, storage_uri
from easel.worker.webhooks import WebhookDeliverer, post_pinned
from tests.factories import inputs_in_storage_and_rows, insert_job, make_key, simultaneous_statuses
from tests.webhook_receiver import Receiver

# ---- row 1: only globally routable webhook addresses -----------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://100.100.100.200/latest/meta-data/",  # cloud metadata in 100.64.0.0/10
        "http://100.64.0.1/",
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
        "http://224.0.0.1/",
        "http://192.0.2.1/",  # documentation range
        "http://[fd00::1]/",
        "http://127.0.0.1/",
        "http://0.0.0.0/",
    ],
)
def test_webhook_urls_must_be_globally_routable(url: str) -> None:
    """Row 1: shared, 6to4, NAT64, Teredo and mapped forms of private hosts are refused."""
    with pytest.raises(UnsafeUrl, match="not globally routable"):
        check_public_url(url)


def test_public_addresses_and_their_wrapped_forms_pass() -> None:
    for text in ("8.8.8.8", "2606:4700:4700::1111", "2002:808:808::"):  # the last: 6to4 of 8.8.8.8
        assert is_public_address(ipaddress.ip_address(text)), text
    check_public_url("http://8.8.8.8:8080/hook")


# ---- row 2: delivery connects to the address it checked -------------------------------


@pytest.fixture
def webhook_db(tmp_path: Path) -> Iterator[sessionmaker]:
    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    yield sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    engine_for(settings.database_url).dispose()


def finished_job(sessions: sessionmaker, webhook_url: str) -> str:
    return insert_job(sessions, status=JobStatus.SUCCEEDED.value, webhook_url=webhook_url)


class SwitchingResolver:
    """A name that answers ``first`` to the first lookup and ``then`` to every later one
    (DNS rebinding, simulated); other names resolve normally."""

    def __init__(self, name: str, first: str, then: str) -> None:
        self.name, self.first, self.then = name, first, then
        self.lookups = 0
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        self.lookups += 1
        address = self.first if self.lookups == 1 else self.then
        return self.real(address, port, *args, **kwargs)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a loopback port, stopped after the test."""
    server = Receiver().start()
    yield server
    server.stop()


def test_delivery_connects_to_the_checked_address_not_a_second_lookup(
    webhook_db: sessionmaker, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """Row 2: the name is public when checked and loopback a moment later: nothing reaches
    the loopback receiver, and the name is looked up once."""
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    # public when checked (and unreachable from here, or slower than the timeout)
    resolver = SwitchingResolver("rebind.example", first="8.8.8.8", then="127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    job_id = finished_job(webhook_db, f"http://rebind.example:{port}/hook")
    deliverer = WebhookDeliverer(webhook_db, "s", "http://easel.test", timeout=1.0)
    assert deliverer.deliver(job_id) is False
    assert receiver.deliveries == []
    assert resolver.lookups == 1


def test_pinned_delivery_keeps_the_host_header(
    webhook_db: sessionmaker, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    port = receiver.server.server_address[1]  # type: ignore[union-attr]
    resolver = SwitchingResolver("hook.example", first="127.0.0.1", then="127.0.0.2")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    job_id = finished_job(webhook_db, f"http://hook.example:{port}/hook?x=1")
    deliverer = WebhookDeliverer(webhook_db, "s", "http://easel.test", timeout=5.0, allow_private=True)
    assert deliverer.deliver(job_id) is True
    [delivery] = receiver.deliveries
    assert delivery.path == "/hook?x=1"
    assert delivery.headers["Host"] == f"hook.example:{port}"
    assert resolver.lookups == 1


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_pinned_https_delivery_sends_sni_and_checks_the_certificate_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _self_signed(tmp_path, "hook.example")
    seen: dict[str, str | None] = {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen["sni"] = name

    context.sni_callback = remember_sni  # type: ignore[assignment]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        resolver = SwitchingResolver("hook.example", "127.0.0.1", "127.0.0.2")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        status = post_pinned(f"https://hook.example:{port}/", b"{}", {}, 5.0, True, ca_certs=str(cert))
        assert status == 204
        assert seen == {"sni": "hook.example", "host": f"hook.example:{port}"}
        resolver = SwitchingResolver("other.example", "127.0.0.1", "127.0.0.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        with pytest.raises(Exception, match=r"(?i)certificate|hostname"):
            post_pinned(f"https://other.example:{port}/", b"{}", {}, 5.0, True, ca_certs=str(cert))
    finally:
        server.shutdown()
        server.server_close()


# ---- the web tier: one app on SQLite, authentication on --------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        home=tmp_path / "home",
        webhook_secret="k",
        rate_limit="1000/minute",
        submit_rate_limit="1000/minute",
        auth_failure_limit="1000/minute",
        max_queued_per_key=50,
    )
    settings.ensure_home()
    upgrade(settings.database_url)
    return settings


def app_for(settings: Settings, **changes: object) -> Flask:
    return create_app(settings.model_copy(update=changes))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def strict_json(response: TestResponse) -> Any:
    """The body parsed as strict JSON: ``NaN``/``Infinity`` tokens fail the test."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a JSON body: {response.get_data(as_text=True)[:300]}")

    return json.loads(response.get_data(as_text=True), parse_constant=refuse)


def error_of(response: TestResponse) -> dict[str, Any]:
    body = strict_json(response)
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


JOB = {"prompt": "p", "width": 64, "height": 64, "steps": 1}


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_submissions_respect_the_queued_cap_on_sqlite(settings: Settings) -> None:
    """Row 3: EASEL_MAX_QUEUED_PER_KEY=2 and 8 simultaneous submissions (img2img, so each
    spends time decoding between the count and the insert): exactly 2 are accepted."""
    app = app_for(settings, max_queued_per_key=2)
    key = make_key(settings)
    body = {**JOB, "steps": 4, "type": "img2img", "image": base64.b64encode(png_bytes(256, 256)).decode()}
    statuses = simultaneous_statuses(app, body, bearer(key))
    assert statuses == [202, 202] + [429] * 6, statuses
    stored, named = inputs_in_storage_and_rows(settings)  # a refused one leaves no input behind
    assert len(named) == 2 and stored == named, (stored, named)


def test_simultaneous_submissions_with_one_idempotency_key_make_one_job(settings: Settings) -> None:
    """8 simultaneous img2img submissions with the same Idempotency-Key: one job; the others
    answer it as a replay (the unique key decides the race), and only its input is kept."""
    app = app_for(settings)
    key = make_key(settings)
    body = {**JOB, "steps": 4, "type": "img2img", "image": base64.b64encode(png_bytes(256, 256)).decode()}
    statuses = simultaneous_statuses(app, body, {**bearer(key), "Idempotency-Key": "once"})
    assert statuses == [202] * 8, statuses
    stored, named = inputs_in_storage_and_rows(settings)
    assert len(named) == 1 and stored == named, (stored, named)


def _login(client: FlaskClient, key: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page)[1]  # type: ignore[index]
    response = client.post("/login", data={"api_key": key, "csrf_token": token, "next": "/"})
    assert response.status_code == 303, response.get_data(as_text=True)[:300]


def test_logout_ends_the_session_on_the_server(settings: Settings) -> None:
    """Row 4: the session cookie taken before logout no longer works when replayed."""
    app = create_app(settings)
    key = make_key(settings)
    with app.test_client() as client:
        _login(client, key)
        assert client.get("/api/v1/jobs").status_code == 200
        stolen = client.get_cookie("easel_session").value  # type: ignore[union-attr]
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))[1]  # type: ignore[index]
        assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    with app.test_client() as attacker:
        attacker.set_cookie("easel_session", stolen)
        assert attacker.get("/api/v1/jobs").status_code == 401
        assert attacker.get("/gallery").status_code == 302  # to the login page
    with app.test_client() as client:  # logging in again works
        _login(client, key)
        assert client.get("/api/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/v1/jobs/{job}/outputs/9223372036854775808", None, 404),
        ("GET", "/api/v1/jobs/{job}/outputs/99999999999999999999999999", None, 404),
        ("GET", "/api/v1/jobs?limit=%C2%B2", None, 422),  # a unicode superscript two
        ("GET", "/api/v1/jobs?limit=" + "9" * 5000, None, 422),
        ("POST", "/api/v1/jobs", b"[" * 100_000 + b"]" * 100_000, 400),
        ("POST", "/api/v1/jobs", b'{"a":' * 5000, 400),
        ("POST", "/api/v1/jobs", b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b"}", 400),
        ("POST", "/api/v1/jobs", b'{"prompt": "p", "seed": ' + b"9" * 5000 + b"}", 400),
    ],
)
def test_hostile_numbers_and_json_get_client_errors(
    settings: Settings, method: str, path: str, body: bytes | None, status: int
) -> None:
    """Row 5: huge integers, unicode digits, deep and truncated JSON: 4xx in the error
    shape, never 500."""
    app = create_app(settings)
    key = make_key(settings)
    with app.test_client() as client:
        job = client.post("/api/v1/jobs", json=JOB, headers=bearer(key)).get_json()["id"]
        response = client.open(
            path.format(job=job),
            method=method,
            data=body,
            content_type="application/json" if body is not None else None,
            headers=bearer(key),
        )
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error_of(response)


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "p", "guidance_scale": NaN}',
        b'{"prompt": "p", "guidance_scale": Infinity}',
        b'{"prompt": "p", "strength": -Infinity, "type": "img2img"}',
        b'{"prompt": "p", "guidance_scale": 1e999}',
        b'{"prompt": NaN}',
    ],
)
def test_non_finite_numbers_are_refused_in_json_bodies(settings: Settings, body: bytes) -> None:
    """Row 6: NaN, Infinity and numbers that overflow a float are not JSON numbers: 400."""
    app = create_app(settings)
    key = make_key(settings)
    with app.test_client() as client:
        response = client.post(
            "/api/v1/jobs", data=body, content_type="application/json", headers=bearer(key)
        )
    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_request"


def test_error_bodies_are_strict_json_when_echoing_non_finite_values(settings: Settings) -> None:
    """Row 6: a form's ``nan``/``inf`` is refused (422) and echoed as text, not as a bare
    ``NaN`` token that JSON parsers reject."""
    app = create_app(settings)
    key = make_key(settings)
    with app.test_client() as client:
        for value in ("nan", "inf", "-inf"):
            response = client.post(
                "/api/v1/jobs", data={"prompt": "p", "guidance_scale": value}, headers=bearer(key)
            )
            assert response.status_code == 422, value
            [detail] = error_of(response)["details"]
            assert detail["field"] == "guidance_scale" and detail["value"] in ("nan", "inf", "-inf")


def test_failed_authentications_are_limited_per_address(settings: Settings) -> None:
    """Row 7: past EASEL_AUTH_FAILURE_LIMIT failures an address's further failures get 429
    with Retry-After, on the API (bad key, no key) and on the login page; a valid key from
    it still works (issue 30); other addresses are untouched."""
    app = app_for(settings, auth_failure_limit="5/minute")
    app.config["WTF_CSRF_ENABLED"] = False  # the login form's token is not the point here
    key = make_key(settings)
    attacker = {"REMOTE_ADDR": "203.0.113.7"}
    with app.test_client() as client:
        for attempt in range(5):
            headers = bearer(f"easel_nope_{attempt}") if attempt % 2 else {}
            response = client.get("/api/v1/jobs", headers=headers, environ_base=attacker)
            assert response.status_code == 401
        for headers in (bearer("easel_nope_x"), {}):
            response = client.get("/api/v1/jobs", headers=headers, environ_base=attacker)
            assert response.status_code == 429
            assert error_of(response)["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert client.get("/api/v1/jobs", headers=bearer(key), environ_base=attacker).status_code == 200
        page = client.post("/login", data={"api_key": "easel_nope_y"}, environ_base=attacker)
        assert page.status_code == 429 and "Retry-After" in page.headers
        other = {"REMOTE_ADDR": "203.0.113.8"}
        assert client.get("/api/v1/jobs", headers=bearer(key), environ_base=other).status_code == 200


def test_failed_logins_count_too(settings: Settings) -> None:
    app = app_for(settings, auth_failure_limit="3/minute")
    with app.test_client() as client:
        client.application.config["WTF_CSRF_ENABLED"] = False
        statuses = [client.post("/login", data={"api_key": f"easel_x_{n}"}).status_code for n in range(5)]
    assert statuses == [401, 401, 401, 429, 429]


def test_refused_submissions_use_no_submit_quota(settings: Settings) -> None:
    """Row 8: a 422 is not accepted work; only accepted submissions count."""
    app = app_for(settings, submit_rate_limit="3/minute")
    key = make_key(settings)
    with app.test_client() as client:
        for _ in range(5):
            assert client.post("/api/v1/jobs", json={"prompt": ""}, headers=bearer(key)).status_code == 422
        statuses = [client.post("/api/v1/jobs", json=JOB, headers=bearer(key)).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]


def test_embedded_limits_are_counted_in_sql_not_in_process_memory(settings: Settings) -> None:
    """Row 8: without Redis the counters are in a SQLite file every web process opens."""
    assert storage_uri(settings) == f"easelsql+sqlite:///{settings.home / 'limits.db'}"
    assert storage_uri(settings.model_copy(update={"broker_url": "redis://r:6379/1"})) == "redis://r:6379/1"


def _hit_counter(uri: str, count: int) -> list[int]:
    from limits.storage import storage_from_string

    storage = storage_from_string(uri)
    return [storage.incr("shared", 60) for _ in range(count)]


def test_sql_counters_are_atomic_across_processes(tmp_path: Path) -> None:
    """Row 8: four processes increment one counter; every value is handed out once."""
    import multiprocessing

    uri = f"easelsql+sqlite:///{tmp_path / 'limits.db'}"
    SqlStorage(uri).engine.dispose()  # creates the file and table; no connection crosses the fork
    with multiprocessing.get_context("fork").Pool(4) as pool:  # each opens its own engine
        results = pool.starmap(_hit_counter, [(uri, 50)] * 4)
    values = sorted(value for chunk in results for value in chunk)
    assert values == list(range(1, 201))
    storage = SqlStorage(uri)
    assert storage.get("shared") == 200
    assert time.time() < storage.get_expiry("shared") <= time.time() + 60
    storage.clear("shared")
    assert storage.get("shared") == 0


def test_authenticated_responses_are_not_cacheable(settings: Settings) -> None:
    """Row 9: Cache-Control: no-store and Vary: Authorization, Cookie."""
    app = create_app(settings)
    key = make_key(settings)
    with app.test_client() as client:
        job = client.post("/api/v1/jobs", json=JOB, headers=bearer(key)).get_json()["id"]
        for path in ("/api/v1/jobs", f"/api/v1/jobs/{job}", "/api/v1/models"):
            response = client.get(path, headers=bearer(key))
            assert response.headers["Cache-Control"] == "no-store", path
            assert {"Authorization", "Cookie"} <= set(response.vary), path
        assert "Cookie" in client.get("/api/v1/jobs").vary  # the 401 too


@pytest.mark.parametrize("auth", [False, True])
def test_unknown_paths_are_404_in_the_error_shape_whatever_the_auth_mode(
    settings: Settings, auth: bool
) -> None:
    """Row 10: a POST to an unknown path is 404, not a CSRF 400 (or a login redirect)."""
    app = app_for(settings, auth_enabled=auth)
    with app.test_client() as client:
        for method in ("POST", "GET", "PUT", "DELETE"):
            response = client.open("/no/such/path", method=method)
            assert response.status_code == 404, (method, response.get_data(as_text=True)[:200])
            assert error_of(response)["code"] == "not_found"
        browser = client.get("/no/such/path", headers={"Accept": "text/html,*/*;q=0.8"})
        assert browser.status_code == 404 and browser.mimetype == "text/html"


def _huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height``, with (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [30000, 14000])  # past Pillow's own bomb limit, and between it and 2x
def test_decompression_bombs_are_refused_for_their_pixel_count(side: int) -> None:
    """Row 11: a 30000x30000 PNG is refused for its size, not as 'not an image'."""
    with pytest.raises(ValidationFailed) as caught:
        load_image("image", _huge_png(side, side), 10**7, 4096 * 4096)
    message = caught.value.details[0]["message"]
    assert message == f"{side}x{side} is {side * side} pixels; at most {4096 * 4096} are allowed"


def test_state_is_private_to_the_service_user(tmp_path: Path) -> None:
    """Row 13: the home folder 0700, the database, limits and stored files 0600, whatever
    the umask."""
    previous = os.umask(0o022)
    try:
        settings = Settings(home=tmp_path / "state")
        settings.ensure_home()
        upgrade(settings.database_url)
        app = create_app(settings)
        with app.test_client() as client:
            client.get("/api/v1/jobs")
        storage = LocalStorage(settings.home / "outputs")
        storage.put("jobs/x/0.png", b"png", "image/png")
    finally:
        os.umask(previous)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(settings.home) == 0o700
    for name in ("easel.db", "limits.db", "secret_key"):
        assert mode(settings.home / name) == 0o600, name
    assert mode(settings.home / "outputs" / "jobs" / "x") == 0o700
    assert mode(settings.home / "outputs" / "jobs" / "x" / "0.png") == 0o600
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    Settings(home=loose).ensure_home()
    assert mode(loose) == 0o700
