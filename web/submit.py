"""Accepting a job: one path for JSON, multipart and the HTML form."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Request
from sqlalchemy.exc import IntegrityError

from shared.errors import BadRequest, UnsupportedMediaType, ValidationFailed, field_detail
from shared.jobs import create_job, find_replay, request_hash
from shared.models import Job
from shared.queue import send_wakeup
from shared.schemas import parse_job_request, resolve_job
from web.services import Services

log = logging.getLogger(__name__)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
IDEMPOTENCY_HEADER = "Idempotency-Key"


def request_fields(request: Request) -> dict[str, Any]:
    """The submitted fields of a JSON, multipart or urlencoded body.

    Empty form fields count as absent, so the model's defaults apply.
    """
    mimetype = request.mimetype
    if mimetype == "application/json":
        raw = request.get_data(cache=True)
        try:
            data = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(
                f"request body is not valid JSON: {exc}", [field_detail("body", str(exc))]
            ) from None
        if not isinstance(data, dict):
            raise BadRequest(
                f"request body must be a JSON object, got {type(data).__name__}",
                [field_detail("body", "must be a JSON object", type(data).__name__)],
            )
        return data
    if mimetype in FORM_TYPES:
        return {key: value for key, value in request.form.items() if value.strip() != ""}
    raise UnsupportedMediaType(
        f"Content-Type {mimetype or '(none)'!r} is not supported; "
        "send application/json or multipart/form-data",
        [field_detail("Content-Type", "unsupported", mimetype or None)],
    )


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255:
        raise ValidationFailed(
            f"{IDEMPOTENCY_HEADER}: must be 1 to 255 characters (got {len(key)})",
            [field_detail(IDEMPOTENCY_HEADER, "must be 1 to 255 characters", key)],
        )
    return key


def accept_job(services: Services, fields: dict[str, Any], key: str | None = None) -> tuple[Job, bool]:
    """Validate, record the job as ``queued`` (committed), then wake a worker.

    Returns the job and whether it is a replay of an earlier request with the same
    ``Idempotency-Key`` (then nothing new is recorded or enqueued). Nothing is
    enqueued for invalid input; a broker failure after the commit loses nothing,
    because the row is the source of truth.
    """
    fingerprint = request_hash(fields)
    if key is not None:
        with services.session() as session:
            replay = find_replay(session, key, fingerprint)
        if replay is not None:
            return replay, True
    request = parse_job_request(fields)
    resolved = resolve_job(request, services.registry, services.settings)
    try:
        with services.session() as session:
            job = create_job(session, resolved, key, fingerprint if key else None)
    except IntegrityError:
        if key is None:
            raise
        with services.session() as session:  # a concurrent request with the same key won
            replay = find_replay(session, key, fingerprint)
        assert replay is not None
        return replay, True
    send_wakeup(services.celery, job.id, job.model)
    log.info("accepted job %s", job.id, extra={"job_id": job.id, "model": job.model})
    return job, False
