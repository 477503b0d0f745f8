"""Every error leaves the app in the one shape, without a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from easel.shared.errors import EaselError, StorageError

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details: list | None = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details or []}}), status


def init_app(app: Flask) -> None:
    @app.errorhandler(EaselError)
    def _easel_error(exc: EaselError):  # type: ignore[no-untyped-def]
        response = jsonify(exc.to_dict())
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response, exc.status

    @app.errorhandler(StorageError)
    def _storage_error(exc: StorageError):  # type: ignore[no-untyped-def]
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
    def _database_unavailable(exc: Exception):  # type: ignore[no-untyped-def]
        log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
        response, status = error_response(
            503,
            "database_unavailable",
            "the database is unavailable; try again shortly (an Idempotency-Key makes retries safe)",
        )
        response.headers["Retry-After"] = "5"
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        if not request.path.startswith("/api/") and exc.code == 404:
            return exc
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
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the server log")
