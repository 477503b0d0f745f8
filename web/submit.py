"""Accepting a job: one path for JSON, multipart and the HTML form."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Request

from shared.errors import BadRequest, UnsupportedMediaType
from shared.jobs import create_job
from shared.models import Job
from shared.queue import send_wakeup
from shared.schemas import parse_job_request, resolve_job
from web.services import Services

log = logging.getLogger(__name__)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


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
                f"request body is not valid JSON: {exc}",
                [{"field": "body", "message": str(exc), "value": None}],
            ) from None
        if not isinstance(data, dict):
            raise BadRequest(
                f"request body must be a JSON object, got {type(data).__name__}",
                [{"field": "body", "message": "must be a JSON object", "value": type(data).__name__}],
            )
        return data
    if mimetype in FORM_TYPES:
        return {key: value for key, value in request.form.items() if value.strip() != ""}
    raise UnsupportedMediaType(
        f"Content-Type {mimetype or '(none)'!r} is not supported; send application/json or "
        f"multipart/form-data",
        [{"field": "Content-Type", "message": "unsupported", "value": mimetype or None}],
    )


def accept_job(services: Services, fields: dict[str, Any]) -> Job:
    """Validate, record the job as ``queued`` (committed), then wake a worker.

    Nothing is enqueued for invalid input; a broker failure after the commit loses
    nothing, because the row is the source of truth.
    """
    request = parse_job_request(fields)
    resolved = resolve_job(request, services.registry, services.settings)
    with services.session() as session:
        job = create_job(session, resolved)
    send_wakeup(services.celery, job.id, job.model)
    log.info("accepted job %s", job.id, extra={"job_id": job.id, "model": job.model})
    return job
