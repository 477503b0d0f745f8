"""Accepting a job: one path for JSON, multipart and the HTML form."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from flask import Request
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import FileStorage

from easel.shared.errors import BadRequest, TooManyJobs, UnsupportedMediaType, ValidationFailed, field_detail
from easel.shared.images import as_mask, as_rgb, decode_base64, encode_png_bytes, load_image
from easel.shared.jobs import INPUT_NAMES, active_jobs, create_job, find_replay, input_key, request_hash
from easel.shared.models import Job
from easel.shared.queue import send_wakeup
from easel.shared.schemas import JobInputs, parse_job_request, resolve_job
from easel.web.services import Services

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
        return {
            key: value for key, value in request.form.items() if value.strip() != "" and key != "csrf_token"
        }
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


def upload_bytes(fields: dict[str, Any], files: Mapping[str, FileStorage]) -> dict[str, bytes]:
    """The image and mask uploads (multipart files, or base64 strings in JSON), removed
    from ``fields``."""
    raw: dict[str, bytes] = {}
    for name in INPUT_NAMES:
        value = fields.pop(name, None)
        upload = files.get(name)
        if upload is not None and upload.filename:
            raw[name] = upload.read()
        elif isinstance(value, str) and value.strip():
            raw[name] = decode_base64(name, value)
        elif value is not None and not isinstance(value, str):
            raise ValidationFailed(
                f"{name}: must be a base64 string or a multipart file",
                [field_detail(name, "must be a base64 string or a multipart file", type(value).__name__)],
            )
    return raw


def decode_inputs(services: Services, raw: dict[str, bytes]) -> JobInputs:
    settings = services.settings
    limits = (settings.max_image_bytes, settings.max_image_pixels)
    image = as_rgb(load_image("image", raw["image"], *limits)) if "image" in raw else None
    mask = as_mask(load_image("mask", raw["mask"], *limits)) if "mask" in raw else None
    return JobInputs(image=image, mask=mask)


def accept_job(
    services: Services,
    fields: dict[str, Any],
    key: str | None = None,
    files: Mapping[str, FileStorage] | None = None,
    owner_id: str | None = None,
    admin: bool = False,
) -> tuple[Job, bool]:
    """Validate, record the job as ``queued`` with its inputs stored, then wake a worker.

    Returns the job and whether it is a replay of an earlier request with the same
    ``Idempotency-Key`` (then nothing new is recorded or enqueued). Nothing is
    enqueued for invalid input; a broker failure after the commit loses nothing,
    because the row is the source of truth.
    """
    fields = dict(fields)
    raw = upload_bytes(fields, files or {})
    fingerprint = request_hash({**fields, **{n: hashlib.sha256(b).hexdigest() for n, b in raw.items()}})
    if key is not None:
        with services.session() as session:
            replay = find_replay(session, key, fingerprint, owner_id)
        if replay is not None:
            return replay, True
    if owner_id is not None:
        with services.session() as session:
            active = active_jobs(session, owner_id)
        if active >= services.settings.max_queued_per_key:
            raise TooManyJobs(
                f"this key already has {active} queued or running jobs; at most "
                f"{services.settings.max_queued_per_key} are allowed (EASEL_MAX_QUEUED_PER_KEY)",
                [field_detail("jobs", "too many queued or running jobs", active)],
            )
    request = parse_job_request(fields)
    inputs = decode_inputs(services, raw)
    resolved = resolve_job(request, services.registry, services.settings, inputs, admin=admin)
    try:
        with services.session() as session:
            job = create_job(session, resolved, key, fingerprint if key else None, owner_id)
            _store_inputs(services, job, inputs)
    except IntegrityError:
        if key is None:
            raise
        with services.session() as session:  # a concurrent request with the same key won
            replay = find_replay(session, key, fingerprint, owner_id)
        assert replay is not None
        return replay, True
    send_wakeup(services.celery, job.id, job.model)
    log.info("accepted job %s", job.id, extra={"job_id": job.id, "model": job.model})
    return job, False


def _store_inputs(services: Services, job: Job, inputs: JobInputs) -> None:
    """Put the inputs in storage before the row commits: a committed job always has them."""
    if inputs.image is not None:
        job.input_key = input_key(job.id, "image")
        services.storage.put(job.input_key, encode_png_bytes(inputs.image), "image/png")
    if inputs.mask is not None:
        job.mask_key = input_key(job.id, "mask")
        services.storage.put(job.mask_key, encode_png_bytes(inputs.mask), "image/png")
