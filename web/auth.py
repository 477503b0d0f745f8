"""Who is calling: API keys (``Authorization: Bearer``) for REST, a signed session for pages.

HTTP Basic whose password is an API key is accepted too (what AUTOMATIC1111 clients
such as ``webuiapi.set_auth`` send; a key alone in the user name works as well). The
client-compatibility surfaces ``/v1`` and ``/sdapi/v1`` are APIs like ``/api/``.

Authentication is on by default. ``EASEL_AUTH_ENABLED=false`` (the local demo of
``make run``) makes every caller an anonymous admin, and the pages say so.

Logout ends the key's page sessions on the server: it bumps the key's
``session_generation``, and a session cookie made before the bump no longer
authenticates (even replayed). Failed authentications are counted per client
address (``web.limits``); past ``EASEL_AUTH_FAILURE_LIMIT`` that address's failures get
429, while a valid key from it still authenticates (behind a proxy every client may share
one address: see ``EASEL_TRUSTED_PROXY_HOPS``).
A request that matches no route is not authenticated: it is answered 404 (or 405).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import update

from easel.shared.db import session_scope
from easel.shared.models import ApiKey
from easel.web.keys import authenticate
from easel.web.limits import auth_blocked_for, record_auth_failure

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()

ANONYMOUS_OWNER = "anonymous"
API_PREFIXES = ("/api/", "/v1/", "/sdapi/")  # answered 401 in their shape, never a login page
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/login", "/static/", "/docs")


@dataclass(frozen=True)
class Principal:
    owner_id: str
    name: str
    is_admin: bool
    via_session: bool = False

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict queries to; ``None`` for admins (they see every job)."""
        return None if self.is_admin else self.owner_id


ANONYMOUS = Principal(ANONYMOUS_OWNER, "anonymous", is_admin=True)


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


def init_app(app: Flask) -> None:
    settings = app.extensions["easel"].settings
    app.secret_key = settings.session_secret()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_NAME="easel_session",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked below: forms always, the API only for cookie callers
        WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.before_request(_identify)
    app.context_processor(lambda: {"auth_enabled": settings.auth_enabled, "principal": g.get("principal")})
    app.register_blueprint(bp)


def _check_csrf() -> None:
    if current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()


def _is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def _identify() -> ResponseReturnValue | None:
    path = request.path
    api = _is_api(path)
    settings = current_app.extensions["easel"].settings
    public = path.startswith(PUBLIC_PATHS)
    if request.url_rule is None:  # no such route (404) or method (405): nothing to protect
        g.principal = ANONYMOUS if not settings.auth_enabled else None
        return None
    if not settings.auth_enabled:
        g.principal = ANONYMOUS
        if not api and request.method == "POST":
            _check_csrf()
        return None
    header = request.headers.get("Authorization")
    if header is not None:
        key = _key_for_header(header)
        if key is None:  # only failures are limited: a valid key is never refused for them
            if (wait := auth_blocked_for()) is not None:
                return _too_many_failures(wait)
            record_auth_failure()
            return _unauthorized("the API key is unknown, malformed or revoked")
        g.principal = Principal(key.id, key.name, key.is_admin)
        return None
    key = _key_for_session()
    if key is not None:
        g.principal = Principal(key.id, key.name, key.is_admin, via_session=True)
        if request.method == "POST":  # a cookie rides along on cross-site posts: check the token
            _check_csrf()
        return None
    g.principal = None
    if public:
        if not api and request.method == "POST":
            _check_csrf()
        return None
    if api:
        if (wait := auth_blocked_for()) is not None:
            return _too_many_failures(wait)
        record_auth_failure()
        return _unauthorized("send an API key: Authorization: Bearer <key>")
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else path))


def _key_for_header(header: str) -> ApiKey | None:
    """The key of an ``Authorization`` header: ``Bearer <key>``, or ``Basic`` whose
    password (else user name) is the key."""
    scheme, _, token = header.strip().partition(" ")
    scheme, token = scheme.lower(), token.strip()
    if scheme == "basic":
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, ValueError):
            return None
        token = password or user
    elif scheme != "bearer":
        return None
    return _key_for(token) if token else None


def _key_for(token: str) -> ApiKey | None:
    with session_scope(current_app.extensions["easel"].settings.database_url) as db:
        key = authenticate(db, token)
        if key is not None:
            db.expunge(key)
        return key


def _key_for_session() -> ApiKey | None:
    key_id = session.get("key_id")
    if not key_id:
        return None
    with session_scope(current_app.extensions["easel"].settings.database_url) as db:
        key = db.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None or key.session_generation != session.get("generation"):
            session.clear()
            return None
        db.expunge(key)
        return key


def _unauthorized(message: str) -> tuple[Response, int]:
    response = jsonify({"error": {"code": "unauthorized", "message": message, "details": []}})
    basic = request.path.startswith("/sdapi/")  # A1111 clients authenticate with Basic
    response.headers["WWW-Authenticate"] = 'Basic realm="easel"' if basic else 'Bearer realm="easel"'
    return response, 401


def _too_many_failures(wait: int) -> tuple[Response, int]:
    response = jsonify(
        {
            "error": {
                "code": "rate_limited",
                "message": f"too many failed authentications from this address; retry in {wait} s",
                "details": [],
            }
        }
    )
    response.headers["Retry-After"] = str(wait)
    return response, 429


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme or host), else the home page."""
    if not target or urlsplit(target).scheme or urlsplit(target).netloc or not target.startswith("/"):
        return url_for("pages.index")
    return target


@bp.get("/login")
def login() -> ResponseReturnValue:
    return render_template("login.html", next=request.args.get("next", ""), error="")


@bp.post("/login")
def login_submit() -> ResponseReturnValue:
    key = _key_for(request.form.get("api_key", ""))
    if key is None:
        if (wait := auth_blocked_for()) is not None:
            page = render_template(
                "login.html",
                next=request.form.get("next", ""),
                error=f"Too many failed sign-ins from this address; try again in {wait} seconds.",
            )
            return page, 429, {"Retry-After": str(wait)}
        record_auth_failure()
        return render_template(
            "login.html",
            next=request.form.get("next", ""),
            error="That key is unknown, malformed or revoked.",
        ), 401
    session.clear()
    session["key_id"] = key.id
    session["generation"] = key.session_generation
    return redirect(_safe_next(request.form.get("next")), code=303)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session here and on the server: every page session of this key made so far
    stops authenticating."""
    principal = g.get("principal")
    if principal is not None and principal.via_session:
        with session_scope(current_app.extensions["easel"].settings.database_url) as db:
            db.execute(
                update(ApiKey)
                .where(ApiKey.id == principal.owner_id)
                .values(session_generation=ApiKey.session_generation + 1)
            )
    session.clear()
    return redirect(url_for("auth.login"), code=303)
