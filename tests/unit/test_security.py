"""API keys, owners, login, CSRF, limits, outbound safety and headers (auth on)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from bench.processes import free_port, wait_for
from easel.cli import main as cli
from easel.migrations.upgrade import upgrade
from easel.shared.settings import Settings, get_settings
from easel.web import create_app
from tests.factories import b64, gradient, make_key, migrated_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(
        home=tmp_path,
        webhook_secret="k",
        submit_rate_limit="1000/minute",
        rate_limit="1000/minute",
        max_queued_per_key=50,
    )


def token_of(client: FlaskClient, path: str) -> str:
    """The CSRF token a page carries (login rotates the session, so fetch it after)."""
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(path).get_data(as_text=True))[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: FlaskClient, key: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/jobs", json={"prompt": "p", "width": 64, "height": 64, **fields}, headers=bearer(key)
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_every_api_route_but_health_needs_a_key(client: FlaskClient, settings: Settings) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    checked = 0
    for path, operations in document["paths"].items():
        url = path.replace("{job_id}", "x" * 32).replace("{index}", "0").replace("{name}", "image")
        for method in operations:
            response = client.open(url, method=method.upper(), json={})
            if path in ("/healthz", "/readyz", "/api/v1/openapi.json"):
                assert response.status_code != 401, path
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.get_json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= 7
    assert client.get("/api/v1/jobs", headers=bearer("easel_nope_nope")).status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Basic abc"}).status_code == 401


def test_revoked_key_is_refused(
    client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(settings, "alice")
    assert client.get("/api/v1/jobs", headers=bearer(key)).status_code == 200
    monkeypatch.setenv("EASEL_HOME", str(settings.home))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["keys", "revoke", key.split("_")[1]])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/jobs", headers=bearer(key)).status_code == 401


def test_owners_see_only_their_jobs_and_admins_see_all(client: FlaskClient, settings: Settings) -> None:
    alice, bob, admin = (
        make_key(settings, "alice"),
        make_key(settings, "bob"),
        make_key(settings, "ops", admin=True),
    )
    job = submit(client, alice, type="img2img", image=b64(gradient()))
    job_id = job["id"]
    for url in (
        f"/api/v1/jobs/{job_id}",
        f"/api/v1/jobs/{job_id}/outputs/0",
        f"/api/v1/jobs/{job_id}/inputs/image",
    ):
        assert client.get(url, headers=bearer(bob)).status_code == 404, url
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(bob)).status_code == 404
    assert client.get("/api/v1/jobs", headers=bearer(bob)).get_json()["jobs"] == []
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=bearer(alice)).get_json()["jobs"]] == [job_id]
    assert client.get(f"/api/v1/jobs/{job_id}/inputs/image", headers=bearer(alice)).status_code == 200
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=bearer(admin)).get_json()["jobs"]] == [job_id]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(admin)).status_code == 200
    assert (
        client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(admin)).get_json()["status"] == "canceled"
    )
    assert len(job_id) == 32 and int(job_id, 16)  # 128 random bits: unguessable ids and output URLs


def test_rate_limit_answers_429_then_recovers(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, submit_rate_limit="3/second", rate_limit="1000/minute")
    upgrade(settings.database_url)
    key = make_key(settings, "eager")
    client = create_app(settings).test_client()
    statuses = [client.post("/api/v1/jobs", json={"prompt": "p"}, headers=bearer(key)) for _ in range(5)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and all(r.status_code in (202, 429) for r in statuses)
    assert int(limited[0].headers["Retry-After"]) >= 0
    assert limited[0].get_json()["error"]["code"] == "rate_limited"
    wait_for(
        lambda: client.post("/api/v1/jobs", json={"prompt": "p"}, headers=bearer(key)).status_code == 202,
        10,
        "the limit window to pass",
    )


def test_limits_still_hold_while_their_redis_is_unreachable(tmp_path: Path) -> None:
    # Nothing listens on this port: the limiter's Redis is down (a restart, a network blip).
    settings = Settings(home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit="3/second")
    upgrade(settings.database_url)
    key = make_key(settings, "during-outage")
    client = create_app(settings).test_client()
    statuses = [client.get("/api/v1/jobs", headers=bearer(key)).status_code for _ in range(5)]
    assert 500 not in statuses and statuses[0] == 200  # counted in memory meanwhile
    assert 429 in statuses


def test_queued_jobs_cap_answers_429_then_recovers(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_queued_per_key=2)
    upgrade(settings.database_url)
    key, other = make_key(settings, "busy"), make_key(settings, "other")
    client = create_app(settings).test_client()
    first = submit(client, key)
    submit(client, key)
    response = client.post("/api/v1/jobs", json={"prompt": "p"}, headers=bearer(key))
    assert response.status_code == 429 and response.headers["Retry-After"] == "10"
    assert "at most 2" in response.get_json()["error"]["message"]
    submit(client, other)  # the cap is per key
    client.post(f"/api/v1/jobs/{first['id']}/cancel", headers=bearer(key))
    submit(client, key)


def test_private_address_webhooks_are_refused(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "hooks")
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "http://localhost/hook",
    ):
        response = client.post("/api/v1/jobs", json={"prompt": "p", "webhook_url": url}, headers=bearer(key))
        assert response.status_code == 422, url
        detail = response.get_json()["error"]["details"][0]
        assert detail["field"] == "webhook_url" and "private, loopback or link-local" in detail["message"]


def test_pages_need_a_login_and_keep_a_safe_session(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "carol")
    page = client.get("/gallery")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    login = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', login.get_data(as_text=True))[1]
    refused = client.post("/login", data={"api_key": "easel_bad_bad", "csrf_token": token})
    assert refused.status_code == 401
    done = client.post("/login", data={"api_key": key, "csrf_token": token, "next": "/gallery"})
    assert done.status_code == 303 and done.headers["Location"] == "/gallery"
    cookie = done.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert client.get("/gallery").status_code == 200
    assert client.get("/api/v1/jobs").status_code == 200  # the session works for the page's own calls
    logout = client.post("/logout", data={"csrf_token": token_of(client, "/gallery")})
    assert logout.status_code == 303
    assert client.get("/gallery").status_code == 302


def test_login_redirects_only_within_the_site(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "dave")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]
    done = client.post("/login", data={"api_key": key, "csrf_token": token, "next": "https://evil.example/"})
    assert done.headers["Location"] == "/"


def test_form_posts_without_the_csrf_token_are_refused(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "erin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]
    client.post("/login", data={"api_key": key, "csrf_token": token})
    token = token_of(client, "/")
    assert client.post("/", data={"prompt": "no token"}).status_code == 400
    ok = client.post("/", data={"prompt": "with token", "width": "64", "csrf_token": token})
    assert ok.status_code == 303
    job_id = ok.headers["Location"].rsplit("/", 1)[1]
    # A cookie-authenticated API post needs the token too; a bearer-authenticated one does not.
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 400
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers={"X-CSRFToken": token}).status_code == 200


def test_security_headers_and_csp(client: FlaskClient, settings: Settings) -> None:
    page = client.get("/login")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in page.get_data(as_text=True)  # no inline scripts for the CSP to block
    api = client.get("/healthz")
    assert api.headers["X-Content-Type-Options"] == "nosniff"


def test_errors_carry_no_traceback_or_internals(client: FlaskClient, settings: Settings) -> None:
    key = make_key(settings, "frank")
    body = client.post(
        "/api/v1/jobs", data=b"{", content_type="application/json", headers=bearer(key)
    ).get_data(as_text=True)
    assert "Traceback" not in body and str(settings.home) not in body


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        assert runner.invoke(cli, ["migrate"]).exit_code == 0
        created = runner.invoke(cli, ["keys", "create", "ci-bot", "--admin"])
        assert created.exit_code == 0, created.output
        key = created.stdout.strip().splitlines()[0]
        assert re.fullmatch(r"easel_[0-9a-f]{8}_[\w-]{32}", key)
        listing = runner.invoke(cli, ["keys", "list"]).output
        assert key.split("_")[1] in listing and "ci-bot" in listing and "admin" in listing
        assert key not in listing  # shown once, never again
        assert runner.invoke(cli, ["keys", "revoke", "nope"]).exit_code != 0
        assert runner.invoke(cli, ["keys", "revoke", key.split("_")[1]]).exit_code == 0
    finally:
        get_settings.cache_clear()
