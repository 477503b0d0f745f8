"""Errors with the one shape the API answers: ``{"error": {code, message, details}}``."""

from __future__ import annotations

from typing import Any


class EaselError(Exception):
    """Base error; ``status`` is the HTTP status the API answers with."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ValidationFailed(EaselError):
    status, code = 422, "validation_error"


class BadRequest(EaselError):
    status, code = 400, "bad_request"


class UnsupportedMediaType(EaselError):
    status, code = 415, "unsupported_media_type"


class NotFound(EaselError):
    status, code = 404, "not_found"


class Conflict(EaselError):
    status, code = 409, "conflict"


class Gone(EaselError):
    status, code = 410, "gone"


class TooManyJobs(EaselError):
    status, code = 429, "too_many_jobs"
    retry_after = 10


class QuotaExceeded(EaselError):
    """A daily usage quota of the key is used up (``shared.usage``); ``retry_after``: the
    seconds until it resets."""

    status, code = 429, "quota_exceeded"

    def __init__(
        self, message: str, details: list[dict[str, Any]] | None = None, retry_after: int = 60
    ) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class UnknownModel(ValueError):
    """A model name that the registry does not know."""


ERROR_DETAIL = "error_detail"
"""The key of a failed job's ``timings`` that holds the operator's detail of its error
(``ModelLoadError.detail``): shown on ``/admin``, left out of the job object."""


class ModelLoadError(RuntimeError):
    """A model (or adapter) whose weights could not be loaded.

    Two messages: ``str(exc)`` (``detail``) is for the operator, with file names, paths and
    the library's own error, and goes to the worker log and ``/admin``; ``public`` is what
    the job's owner is told (``error.message``, the OpenAI and AUTOMATIC1111 bodies): what
    failed, by name, and what they can do, never a path or a library's text.
    """

    def __init__(self, detail: str, public: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.public = public or (
            "a model this job needs cannot be loaded on this server; the operator has the cause "
            "in the worker log"
        )


def cannot_load(kind: str, name: str, advice: str) -> str:
    """The public message of a ``ModelLoadError``: ``kind`` ``name`` failed, and ``advice``."""
    return (
        f"{kind} {name!r} cannot be loaded on this server ({advice}); "
        "the operator has the cause in the worker log"
    )


class StorageError(RuntimeError):
    """Storage could not read or write an object."""


def field_detail(field: str, message: str, value: Any = None) -> dict[str, Any]:
    """One entry of ``details``: the field, what is wrong, and the bad value."""
    return {"field": field, "message": message, "value": _jsonable(value)}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:20]]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in list(value.items())[:20]}
    return repr(value)[:200]
