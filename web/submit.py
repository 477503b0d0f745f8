"""Accepting a job: one path for JSON, multipart and the HTML form."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Request
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from easel.shared.errors import (
    BadRequest,
    QuotaExceeded,
    TooManyJobs,
    UnsupportedMediaType,
    ValidationFailed,
    field_detail,
)
from easel.shared.images import as_mask, as_rgb, decode_base64, encode_png_bytes, load_image
from easel.shared.jobs import active_jobs, create_job, find_replay, input_key, request_hash
from easel.shared.kinds import INPUTS
from easel.shared.models import Job, new_job_id
from easel.shared.schemas import JobInputs, parse_job_request, resolve_job
from easel.shared.tracing import traced
from easel.shared.usage import check_quota
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
        data = parse_json_body(request.get_data(cache=True))
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


MAX_JSON_DEPTH = 32


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range; send a finite number")
    return value


def _json_depth(value: Any) -> int:
    """How deeply ``value`` nests arrays and objects (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend(
                    (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def parse_json_body(raw: bytes) -> Any:
    """Strict JSON: no ``NaN``/``Infinity``, no number that overflows a float, at most
    ``MAX_JSON_DEPTH`` levels of nesting; ``BadRequest`` (400) otherwise."""
    try:
        data = json.loads(raw or b"null", parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        message = f"nested deeper than {MAX_JSON_DEPTH} levels"
        raise BadRequest(
            f"request body is not valid JSON: {message}", [field_detail("body", message)]
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", [field_detail("body", str(exc))]) from None
    if _json_depth(data) > MAX_JSON_DEPTH:
        message = f"nested deeper than {MAX_JSON_DEPTH} levels"
        raise BadRequest(f"request body is not valid JSON: {message}", [field_detail("body", message)])
    return data


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
    """The input uploads (multipart files, or base64 strings in JSON), removed from
    ``fields``, by upload field (``shared.kinds.INPUTS``)."""
    raw: dict[str, bytes] = {}
    for name in (item.upload for item in INPUTS if item.by_kind):  # control: control_upload
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
    control = control_upload(fields, files)
    if control is not None:
        raw["control_image"] = control  # not "control": the fingerprint keeps the control fields
    return raw


def control_upload(fields: dict[str, Any], files: Mapping[str, FileStorage]) -> bytes | None:
    """The ControlNet image (``control.image`` base64 in JSON, or a ``control_image``
    multipart file), removed from ``fields``; multipart's ``control_model`` and
    ``control_scale`` become the ``control`` object."""
    model, scale = fields.pop("control_model", None), fields.pop("control_scale", None)
    if model is not None or scale is not None:
        fields["control"] = {
            key: value for key, value in (("model", model), ("scale", scale)) if value is not None
        }
    control = fields.get("control")
    upload = files.get("control_image")
    if upload is not None and upload.filename:
        data: bytes = upload.read()
        return data
    value = control.pop("image", None) if isinstance(control, dict) else None
    if isinstance(value, str) and value.strip():
        return decode_base64("control", value)
    if value is not None:
        raise ValidationFailed(
            "control: image must be a base64 string",
            [field_detail("control", "image must be a base64 string", type(value).__name__)],
        )
    return None


def decode_inputs(services: Services, raw: dict[str, bytes]) -> JobInputs:
    settings = services.settings
    limits = (settings.max_image_bytes, settings.max_image_pixels)
    return JobInputs(
        **{
            item.name: (as_mask if item.mode == "L" else as_rgb)(
                load_image(item.name, raw[item.upload], *limits)
            )
            for item in INPUTS
            if item.upload in raw
        }
    )


Describe = Callable[[Session, Job], dict[str, Any]]
"""The job object of a job, read in the session that recorded or found it."""


@dataclass(frozen=True)
class Accepted:
    """What a submission came to: the job; whether it replays an earlier request with the
    same ``Idempotency-Key`` (then nothing new was recorded or enqueued); and the job
    object ``describe`` made of it, if one was asked for."""

    job: Job
    replayed: bool
    view: dict[str, Any] | None = None


@traced("easel.submit")  # the job's trace starts here (shared.tracing)
def accept_job(
    services: Services,
    fields: dict[str, Any],
    key: str | None = None,
    files: Mapping[str, FileStorage] | None = None,
    owner_id: str | None = None,
    admin: bool = False,
    describe: Describe | None = None,
) -> Accepted:
    """Validate, record the job as ``queued`` with its inputs stored, then wake a worker.

    Nothing is enqueued for invalid input; a broker failure after the commit loses
    nothing, because the row is the source of truth. ``describe(session, job)`` makes the
    job object right after the insert commits (so the queue position and estimate are
    those of the moment it joined the queue), or in the transaction that finds its
    replay. The replay lookup and, with uploads to decode, an early cap check are one
    transaction; the owner's turn, the cap check and the insert another, kept that short
    because an owner's submissions wait for each other's.
    """
    fields = dict(fields)
    raw = upload_bytes(fields, files or {})
    fingerprint = request_hash({**fields, **{n: hashlib.sha256(b).hexdigest() for n, b in raw.items()}})
    if key is not None or (owner_id is not None and raw):
        with services.session() as session:
            replay = find_replay(session, key, fingerprint, owner_id) if key is not None else None
            if replay is not None:
                return Accepted(replay, True, describe(session, replay) if describe else None)
            if owner_id is not None and raw:  # refused before decoding the uploads; held again below
                _check_cap(services, session, owner_id)
                if not admin:
                    check_quota(session, services.settings, owner_id)
    request = parse_job_request(fields)
    inputs = decode_inputs(services, raw)
    resolved = resolve_job(request, services.registry, services.settings, inputs, admin=admin)
    job_id = new_job_id()
    input_keys = _store_inputs(services, job_id, inputs)  # before the owner's turn: uploads are slow
    recorded = False
    try:
        with services.session() as session:
            if owner_id is not None:  # the cap holds under concurrency: count and insert as one
                hold_owner_turn(session, owner_id)
                _check_cap(services, session, owner_id)
                if not admin:  # daily quotas (``shared.usage``): one read of today's row
                    check_quota(session, services.settings, owner_id, resolved.num_images)
            replay_key = fingerprint if key else None
            job = create_job(session, resolved, key, replay_key, owner_id, job_id, input_keys)
            session.commit()  # ends the owner's turn
            recorded = True
            services.wakeups.wake(job.id, job.model)
            view = describe(session, job) if describe else None
    except BaseException as exc:
        refused = isinstance(exc, TooManyJobs | QuotaExceeded | IntegrityError)  # raised before the commit
        if not recorded and (refused or not _recorded(services, job_id)):
            _remove_inputs(services, job_id, input_keys)
        if not isinstance(exc, IntegrityError) or key is None:
            raise
        with services.session() as session:  # a concurrent request with the same key won
            replay = find_replay(session, key, fingerprint, owner_id)
            assert replay is not None
            return Accepted(replay, True, describe(session, replay) if describe else None)
    log.info("accepted job %s", job.id, extra={"job_id": job.id, "model": job.model})
    return Accepted(job, False, view)


SUBMIT_LOCK_CLASS = 0x45_53  # PostgreSQL advisory lock namespace of submissions ("ES")


def hold_owner_turn(session: Session, owner_id: str) -> None:
    """Serialise the submissions of one owner until ``session``'s transaction ends, so a
    count of its jobs stays true until the new row commits.

    PostgreSQL: a transaction-scoped advisory lock on the owner. SQLite: a write that
    changes nothing takes the database's write lock now (one writer at a time), before
    the count is read.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))"),
            {"space": SUBMIT_LOCK_CLASS, "owner": owner_id},
        )
    else:
        session.execute(text("UPDATE jobs SET id = id WHERE 0 = 1"))


def _check_cap(services: Services, session: Session, owner_id: str) -> None:
    """``TooManyJobs`` (429) if ``owner_id`` already has the most queued + running jobs."""
    cap = services.settings.max_queued_per_key
    active = active_jobs(session, owner_id)
    if active >= cap:
        raise TooManyJobs(
            f"this key already has {active} queued or running jobs; at most "
            f"{cap} are allowed (EASEL_MAX_QUEUED_PER_KEY)",
            [field_detail("jobs", "too many queued or running jobs", active)],
        )


def _store_inputs(services: Services, job_id: str, inputs: JobInputs) -> dict[str, str]:
    """Put the inputs of job ``job_id`` in storage before its row is written, so a committed
    job always has them: their storage keys by column (``shared.kinds.INPUTS``)."""
    keys: dict[str, str] = {}
    for item in INPUTS:
        picture, column = getattr(inputs, item.name), item.column
        if picture is not None:
            keys[column] = input_key(job_id, item.name)
            try:
                services.storage.put(keys[column], encode_png_bytes(picture), "image/png")
            except BaseException:
                _remove_inputs(services, job_id, keys)
                raise
    return keys


def _recorded(services: Services, job_id: str) -> bool:
    """Whether job ``job_id``'s row exists; ``True`` when that cannot be told (a commit
    in doubt keeps its inputs: an orphan costs storage, a missing input fails the job)."""
    try:
        with services.session() as session:
            return session.get(Job, job_id) is not None
    except Exception:
        return True


def _remove_inputs(services: Services, job_id: str, keys: Mapping[str, str]) -> None:
    """Delete the stored inputs of a job that was not recorded (best effort: logged)."""
    if not keys:
        return
    try:
        services.storage.delete(list(keys.values()))
    except Exception:
        log.warning("inputs of unrecorded job %s not removed: %s", job_id, ", ".join(keys.values()))
