"""Every error leaves the app in the one shape, without a traceback; every JSON body is
strict JSON (no ``NaN``/``Infinity``)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from easel.shared.errors import EaselError, StorageError

log = logging.getLogger(__name__)

MAX_URL_INT = 2**31 - 1  # the largest value of an INTEGER column on every backend


class BoundedIntConverter(IntegerConverter):
    """``<int:...>`` in every route: a number past ``MAX_URL_INT`` matches no route (404)
    instead of overflowing the database driver."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_URL_INT)
        super().__init__(url_map, *args, **kwargs)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its text (``"nan"``, ``"inf"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """JSON out as strict JSON: a non-finite float (say, an echoed bad value) becomes
    its text instead of the ``NaN``/``Infinity`` tokens that JSON parsers refuse."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        try:
            return json.dumps(obj, allow_nan=False, **kwargs)
        except ValueError:
            return json.dumps(finite(obj), allow_nan=False, **kwargs)


def wants_html() -> bool:
    """A browser asking for a page: it rates text/html above JSON (``*/*`` rates both alike)."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def error_response(
    status: int, code: str, message: str, details: list[Any] | None = None
) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details or []}}), status


def init_app(app: Flask) -> None:
    """Error handlers, the strict JSON provider and the bounded ``int`` converter (before
    any blueprint is registered, so every route uses it)."""
    app.json = StrictJSONProvider(app)
    app.url_map.converters["int"] = BoundedIntConverter

    @app.errorhandler(EaselError)
    def _easel_error(exc: EaselError) -> ResponseReturnValue:
        response = jsonify(exc.to_dict())
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response, exc.status

    @app.errorhandler(StorageError)
    def _storage_error(exc: StorageError) -> ResponseReturnValue:
        log.warning("storage unavailable on %s %s: %s", request.method, request.path, exc)
        response, status = error_response(
            503, "storage_unavailable", "storage is unavailable; try again shortly"
        )
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(DisconnectionError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(exc: Exception) -> ResponseReturnValue:
        log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        response, status = error_response(
            503,
            "database_unavailable",
            "the database is unavailable; try again shortly (an Idempotency-Key makes retries safe)",
        )
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        if not request.path.startswith("/api/") and exc.code in (404, 405) and wants_html():
            return exc  # a browser gets the page; other clients get the error shape
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body exceeds the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        elif exc.code == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif exc.code == 404:
            message = f"no such resource: {request.path}"
        elif exc.code == 429:
            from easel.web.limits import retry_after_seconds

            message = f"rate limit exceeded ({exc.description}); retry after the Retry-After seconds"
            response, status = error_response(429, "rate_limited", message)
            response.headers["Retry-After"] = str(retry_after_seconds())
            return response, status
        response, status = error_response(exc.code or 500, code, message)
        valid_methods = getattr(exc, "valid_methods", None)  # MethodNotAllowed's
        if exc.code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the server log")
