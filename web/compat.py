"""What the client-compatibility surfaces (``web.openai_api``, ``web.a1111``) share.

Each surface is a thin adapter over the one job model: it turns its request into the
fields of an ordinary Easel job, submits them through ``web.submit.accept_job`` (the
REST API's validation, caps, storage and wake-up), holds the request until the job
finishes (a held call, ``web.held_calls``, bounded by ``EASEL_SYNC_TIMEOUT_SECONDS``), and answers in its
own shape. Errors are raised as Easel errors and rewritten into the surface's shape by
``rewrite_errors`` as the response leaves, so refusals made before the view runs
(authentication, rate limits, body size) take that shape too.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.datastructures import FileStorage

from easel.shared.errors import EaselError
from easel.shared.jobs import get_job_fresh
from easel.shared.models import Job, JobStatus
from easel.web.auth import current_principal
from easel.web.held_calls import client_gone_check, holder_id
from easel.web.limits import api_limit, limiter
from easel.web.services import services
from easel.web.submit import accept_job

JOB_ID_HEADER = "Easel-Job-Id"


class JobOutcomeError(EaselError):
    """A held job that did not succeed (``failed``, ``canceled``) or did not finish in
    time (``timeout``). The job exists: the message names it, and a blind retry would
    make another one."""

    def __init__(self, status: int, code: str, message: str, job_id: str) -> None:
        super().__init__(message)
        self.status, self.code, self.job_id = status, code, job_id


@dataclass(frozen=True)
class Outcome:
    """A submitted job as it was when the hold ended (outputs loaded, detached)."""

    job: Job
    finished: bool


def upload(name: str, data: bytes) -> FileStorage:
    """Bytes handed to ``accept_job`` as the multipart file ``name``."""
    return FileStorage(stream=io.BytesIO(data), filename=f"{name}.png", name=name)


def run_job(fields: dict[str, Any], files: Mapping[str, FileStorage] | None = None) -> Outcome:
    """Submit ``fields`` as the caller's job and hold until it finishes (or the sync
    timeout passes, or the client hangs up): a held call (``easel.web.held_calls``),
    with no session open while it waits."""
    svc = services()
    principal = current_principal()
    holder = holder_id(svc.settings.auth_enabled, principal.owner_id)
    # The slot first: a call refused by a held-call bound (429) records no job.
    with svc.held_calls.held(request.blueprint or "sync", holder, None) as call:
        fresh = accept_job(svc, fields, None, files, owner_id=principal.owner_id, admin=principal.is_admin)
        call.job_id = job_id = fresh.job.id
        finished = call.wait_finished(svc.settings.sync_timeout_seconds, client_gone_check())
    with svc.session() as session:
        job = get_job_fresh(session, job_id)
        _ = job.outputs  # loaded before the session closes
    return Outcome(job, finished)


def outcome_error(outcome: Outcome, canceled_ok: bool = False) -> JobOutcomeError | None:
    """The error for a job that timed out, failed or (unless ``canceled_ok``) was canceled."""
    job = outcome.job
    if not outcome.finished:
        timeout = services().settings.sync_timeout_seconds
        return JobOutcomeError(
            504,
            "timeout",
            f"Easel job {job.id} did not finish within {timeout:g} s (EASEL_SYNC_TIMEOUT_SECONDS); "
            f"it is {job.status} and goes on: GET /api/v1/jobs/{job.id}",
            job.id,
        )
    if job.status == JobStatus.FAILED.value:
        return JobOutcomeError(
            500,
            "job_failed",
            f"Easel job {job.id} failed ({job.error_code}): {job.error_message or 'no message'}",
            job.id,
        )
    if job.status == JobStatus.CANCELED.value and not canceled_ok:
        return JobOutcomeError(409, "job_canceled", f"Easel job {job.id} was canceled", job.id)
    return None


def outcome_response(exc: JobOutcomeError) -> tuple[Response, int]:
    """A blueprint's handler of ``JobOutcomeError``: the error, with the job's id in
    the ``Easel-Job-Id`` header."""
    response = jsonify(exc.to_dict())
    response.headers[JOB_ID_HEADER] = exc.job_id
    return response, exc.status


def output_bytes(job: Job) -> list[bytes]:
    """The stored images of ``job``, in output order."""
    storage = services().storage
    return [storage.get(output.storage_key) for output in job.outputs]


def output_b64(job: Job) -> list[str]:
    return [base64.b64encode(data).decode() for data in output_bytes(job)]


def output_links(job: Job) -> list[str]:
    """A URL per output: presigned (no key needed) when storage offers one, else the
    REST output link (which needs the key when authentication is on)."""
    svc = services()
    links = []
    for output in job.outputs:
        presigned = svc.storage.presigned_url(output.storage_key, svc.settings.presign_expires_seconds)
        links.append(
            presigned or url_for("api.get_output", job_id=job.id, index=output.index, _external=True)
        )
    return links


def easel_error(response: Response) -> dict[str, Any] | None:
    """The ``error`` object of an Easel error response, or ``None`` for anything else."""
    if response.status_code < 400 or response.mimetype != "application/json" or response.direct_passthrough:
        return None
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "details" not in error or "code" not in error:
        return None
    return error


def compat_blueprint(
    name: str, import_name: str, url_prefix: str, translate: Callable[[int, dict[str, Any]], tuple[int, Any]]
) -> Blueprint:
    """The blueprint of a compatible API: rate-limited as the rest of the API, its Easel
    errors rewritten with ``translate`` (see ``rewrite_errors``) and a finished job that
    failed answered by ``outcome_response``."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix)
    limiter.limit(api_limit)(bp)
    bp.after_request(rewrite_errors(translate))
    bp.register_error_handler(JobOutcomeError, outcome_response)
    return bp


def rewrite_errors(
    translate: Callable[[int, dict[str, Any]], tuple[int, Any]],
) -> Callable[[Response], Response]:
    """An ``after_request`` hook that rewrites Easel error bodies with ``translate``
    (status, error object) -> (status, body); other responses pass unchanged."""

    def hook(response: Response) -> Response:
        error = easel_error(response)
        if error is None:
            return response
        status, body = translate(response.status_code, error)
        response.set_data(json.dumps(body))
        response.status_code = status
        if error.get("code") in ("timeout", "job_failed", "job_canceled"):
            response.headers["x-should-retry"] = "false"  # the job exists; a retry makes another
        return response

    return hook
