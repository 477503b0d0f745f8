"""Issue 16: what a probe of the running stack found, each closed and pinned by a test.

The rows of the issue are named in each test's docstring. These run in process
(Flask's test client, a real SQLite database, real sockets); the ones that need
several processes or PostgreSQL are in tests/integration/test_hardening_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from easel.migrations.upgrade import upgrade
from easel.shared.db import engine_for
from easel.shared.models import Job, JobStatus
from easel.shared.netsafety import UnsafeUrl, check_public_url, is_public_address
from easel.shared.settings import Settings
from easel.worker.webhooks import WebhookDeliverer, post_pinned
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
    with pytest.raises(UnsafeUrl, match="not a globally routable address"):
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
    with sessions() as session:
        job = Job(
            type="txt2img",
            model="tiny-sd",
            status=JobStatus.SUCCEEDED.value,
            prompt="p",
            width=64,
            height=64,
            steps=1,
            guidance_scale=1.0,
            scheduler="euler",
            seed=1,
            num_images=1,
            webhook_url=webhook_url,
            timings={},
        )
        session.add(job)
        session.commit()
        return job.id


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


def test_delivery_connects_to_the_checked_address_not_a_second_lookup(
    webhook_db: sessionmaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 2: the name is public when checked and loopback a moment later: nothing reaches
    the loopback receiver, and the name is looked up once."""
    receiver = Receiver().start()
    try:
        port = receiver.server.server_address[1]  # type: ignore[union-attr]
        # public when checked (and unreachable from here, or slower than the timeout)
        resolver = SwitchingResolver("rebind.example", first="8.8.8.8", then="127.0.0.1")
        monkeypatch.setattr(socket, "getaddrinfo", resolver)
        job_id = finished_job(webhook_db, f"http://rebind.example:{port}/hook")
        deliverer = WebhookDeliverer(webhook_db, "s", "http://easel.test", timeout=1.0)
        assert deliverer.deliver(job_id) is False
        assert receiver.deliveries == []
        assert resolver.lookups == 1
    finally:
        receiver.stop()


def test_pinned_delivery_keeps_the_host_header(
    webhook_db: sessionmaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver().start()
    try:
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
    finally:
        receiver.stop()


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
