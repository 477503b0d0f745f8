"""REST v1: jobs, outputs and models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from easel.shared.catalog_registry import fitting_adapters
from easel.shared.errors import Gone, NotFound, ValidationFailed, field_detail
from easel.shared.jobs import cancel_job, describe, get_job, list_jobs, preview_key, stored_inputs
from easel.shared.kinds import INPUT_NAMES, KIND_NAMES
from easel.shared.models import Job, JobOutput, JobStatus
from easel.shared.queue import send_webhook
from easel.shared.schemas import FamilyView, JobList, ModelAdapters, ModelLimits, ModelList, ModelView
from easel.shared.workers import live_workers_by_model
from easel.web import events
from easel.web.auth import current_principal
from easel.web.eta import QueueEstimates
from easel.web.held_calls import TooManyHeldCalls, client_gone_check, holder_id
from easel.web.limits import accepted, api_limit, limiter, submit_limit
from easel.web.prefer import prefer_wait
from easel.web.services import Services, services
from easel.web.submit import accept_job, idempotency_key, request_fields

bp = Blueprint("api", __name__, url_prefix="/api/v1")
limiter.limit(api_limit)(bp)

MAX_PAGE = 100


def output_url(job: Job, index: int) -> str:
    return url_for("api.get_output", job_id=job.id, index=index, _external=True)


def input_url(job: Job, name: str) -> str:
    return url_for("api.get_input", job_id=job.id, name=name, _external=True)


def preview_url(job: Job) -> str:
    """The live preview's link; the step in it changes the URL whenever the picture does."""
    return url_for("api.get_preview", job_id=job.id, step=job.preview_step, _external=True)


def queue_estimates(session: Session) -> QueueEstimates:
    """Positions and estimates for the jobs of this request, with the app's settings."""
    settings = services().settings
    return QueueEstimates(session, settings.eta_history_jobs, settings.worker_lost_after_seconds)


def job_view(session: Session, job: Job, estimates: QueueEstimates | None = None) -> dict[str, Any]:
    """The job object, with its queue position, ETA and whether it waits for a worker;
    ``estimates`` shares the live workers and cost figures between the jobs of a request."""
    place = (estimates or queue_estimates(session)).place(job)
    return describe(
        job,
        output_url,
        place.position,
        place.eta_seconds,
        input_url,
        serving_workers=place.workers,
        preview_url=preview_url,
    ).model_dump(mode="json")


@bp.post("/jobs")
@limiter.limit(submit_limit, deduct_when=accepted)  # a refused submission uses no quota
def create_job() -> ResponseReturnValue:
    svc = services()
    principal = current_principal()
    wait = prefer_wait(request.headers.getlist("Prefer"))  # Replicate's Prefer: wait=N
    submitted = accept_job(
        svc,
        request_fields(request),
        idempotency_key(request),
        request.files,
        owner_id=principal.owner_id,
        admin=principal.is_admin,
        describe=job_view if wait is None else None,
    )
    job_id, body = submitted.job.id, submitted.view
    applied = wait is not None and hold_for(svc, principal.owner_id, job_id, wait)
    if wait is not None:  # the job as it is now (at once past a held-call bound: a plain 202)
        with svc.session() as session:
            body = job_view(session, get_job(session, job_id))
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_job", job_id=job_id)
    if applied:
        response.headers["Preference-Applied"] = f"wait={wait}"
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def hold_for(svc: Services, owner_id: str, job_id: str, seconds: float) -> bool:
    """Hold the request up to ``seconds`` for the job (``Prefer: wait``), or until the
    client hangs up; False (no hold: a plain ``202``) past a held-call bound."""
    holder = holder_id(svc.settings.auth_enabled, owner_id)
    try:
        with svc.held_calls.held("wait", holder, job_id) as call:
            call.wait_finished(seconds, client_gone_check())
    except TooManyHeldCalls:
        return False
    return True


LIST_PARAMETERS = frozenset({"status", "type", "limit", "cursor"})


@bp.get("/jobs")
def jobs_index() -> ResponseReturnValue:
    args = request.args
    status, job_type = args.get("status"), args.get("type")
    details = [
        field_detail(name or "(empty name)", "is not a query parameter of this route", args.get(name))
        for name in args
        if name not in LIST_PARAMETERS
    ]
    if status is not None and status not in {s.value for s in JobStatus}:
        details.append(
            field_detail("status", f"must be one of {', '.join(s.value for s in JobStatus)}", status)
        )
    if job_type is not None and job_type not in KIND_NAMES:
        details.append(field_detail("type", f"must be one of {', '.join(KIND_NAMES)}", job_type))
    raw_limit = args.get("limit", "20")
    digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6
    if not digits or not 1 <= int(raw_limit) <= MAX_PAGE:
        details.append(field_detail("limit", f"must be a whole number from 1 to {MAX_PAGE}", raw_limit))
    if details:
        raise ValidationFailed(
            "; ".join(f"{d['field']}: {d['message']} (got {d['value']!r})" for d in details), details
        )
    with services().session() as session:
        jobs, next_cursor = list_jobs(
            session,
            int(raw_limit),
            args.get("cursor") or None,
            status,
            job_type,
            current_principal().owner_filter,
        )
        estimates = queue_estimates(session)
        estimates.prepare(jobs)
        views = [job_view(session, job, estimates) for job in jobs]
    return jsonify(
        JobList.model_validate({"jobs": views, "next_cursor": next_cursor}).model_dump(mode="json")
    )


@bp.get("/jobs/<job_id>", endpoint="get_job")
def show_job(job_id: str) -> ResponseReturnValue:
    with services().session() as session:
        return jsonify(job_view(session, get_job(session, job_id, current_principal().owner_filter)))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> ResponseReturnValue:
    svc = services()
    with svc.session() as session:
        job = cancel_job(session, job_id, current_principal().owner_filter)
        body = job_view(session, job)
    if job.status == JobStatus.CANCELED.value and job.webhook_url:
        send_webhook(svc.celery, job.id)  # a running job's webhook is sent by its worker
    return jsonify(body)


@bp.get("/jobs/<job_id>/outputs/<int:index>")
def get_output(job_id: str, index: int) -> ResponseReturnValue:
    svc = services()
    with svc.session() as session:
        job = get_job(session, job_id, current_principal().owner_filter)
        output = session.query(JobOutput).filter_by(job_id=job_id, index=index).one_or_none()
        pruned = job.outputs_pruned_at
        if output is not None and pruned is not None and output.created_at <= pruned:
            raise _pruned(job, "outputs", "index", index, svc.settings.retention_outputs_days)
        if output is None:
            raise NotFound(
                f"job {job_id!r} has no output {index}", [field_detail("index", "not found", index)]
            )
        key, content_type = output.storage_key, output.content_type
    return _serve(key, content_type)


@bp.get(f"/jobs/<job_id>/inputs/<any({', '.join(INPUT_NAMES)}):name>")
def get_input(job_id: str, name: str) -> ResponseReturnValue:
    """A stored input image of a job (``shared.kinds.INPUTS``): the image or mask of an
    img2img / inpaint job, or its ControlNet image."""
    with services().session() as session:
        job = get_job(session, job_id, current_principal().owner_filter)
        key = stored_inputs(job).get(name)
        if key is not None and job.inputs_pruned_at is not None:
            raise _pruned(job, "inputs", "name", name, services().settings.retention_inputs_days)
    if key is None:
        raise NotFound(f"job {job_id!r} has no input {name!r}", [field_detail("name", "not found", name)])
    return _serve(key, "image/png")


@bp.get("/jobs/<job_id>/preview")
def get_preview(job_id: str) -> ResponseReturnValue:
    """The latest live preview of the job's first image (JPEG), overwritten as it denoises."""
    svc = services()
    with svc.session() as session:
        job = get_job(session, job_id, current_principal().owner_filter)
        step, pruned = job.preview_step, job.outputs_pruned_at is not None
    if step is None or pruned:
        raise NotFound(
            f"job {job_id!r} has no preview (yet, or any more)", [field_detail("preview", "not found", None)]
        )
    presigned = svc.storage.presigned_url(preview_key(job_id), svc.settings.presign_expires_seconds)
    response = redirect(presigned, code=302) if presigned else Response(svc.storage.get(preview_key(job_id)))
    if not presigned:
        response.mimetype = "image/jpeg"
    response.headers["Cache-Control"] = "private, no-cache"  # the object is overwritten in place
    response.headers["Easel-Preview-Step"] = str(step)
    return response


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str) -> ResponseReturnValue:
    """The job's events as ``text/event-stream`` (``easel.web.events``)."""
    svc = services()
    settings = svc.settings
    principal = current_principal()
    last_event_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    with svc.session() as session:
        get_job(session, job_id, principal.owner_filter)  # 404 for someone else's job
        if last_event_id == events.DONE_ID:
            return Response(status=204)  # the client saw the end: EventSource stops here
    call = svc.held_calls.take("stream", holder_id(settings.auth_enabled, principal.owner_id), job_id)

    def read() -> dict[str, Any]:
        with svc.session() as session:  # closed (connection back in the pool) before the wait
            return job_view(session, get_job(session, job_id))

    def generate() -> Any:
        heartbeat = settings.event_stream_heartbeat_seconds
        yield from events.stream(read, last_event_id, heartbeat, call.wait_change)

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.call_on_close(lambda: svc.held_calls.release(call))  # the slot is free when the stream ends
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


def _pruned(job: Job, kind: str, field: str, value: object, days: float) -> Gone:
    """410 for an object retention deleted (``shared.retention``)."""
    when = job.outputs_pruned_at if kind == "outputs" else job.inputs_pruned_at
    assert when is not None
    return Gone(
        f"the {kind} of job {job.id!r} were deleted on {when.isoformat(timespec='seconds')} "
        f"by retention (EASEL_RETENTION_{kind.upper()}_DAYS={days:g})",
        [field_detail(field, f"{kind} deleted by retention", value)],
    )


def _serve(key: str, content_type: str) -> ResponseReturnValue:
    """The object's bytes, or a redirect to a presigned URL when storage offers one."""
    svc = services()
    presigned = svc.storage.presigned_url(key, svc.settings.presign_expires_seconds)
    if presigned:
        return redirect(presigned, code=302)
    response = Response(svc.storage.get(key), mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=3600, immutable"
    return response


@bp.get("/models")
def list_models() -> ResponseReturnValue:
    svc = services()
    registry = svc.registry
    with svc.session() as session:
        workers = live_workers_by_model(session, registry.names(), svc.settings.worker_lost_after_seconds)
    models = [
        ModelView(
            name=spec.name,
            default=spec.name == registry.default,
            architecture=spec.architecture,
            family=FamilyView(
                name=spec.family_info.name.value,
                title=spec.family_info.title,
                guidance=spec.family_info.guidance.value,
                negative_prompt=spec.family_info.negative_prompt,
            ),
            types=list(spec.types),
            schedulers=list(spec.family_info.schedulers),
            limits=ModelLimits(
                min_size=spec.min_size,
                max_size=spec.max_size,
                default_size=spec.default_size,
                max_steps=spec.max_steps,
                default_steps=spec.default_steps,
                max_num_images=spec.max_num_images,
                default_guidance_scale=spec.default_guidance_scale,
                default_scheduler=spec.default_scheduler,
                size_multiple=spec.family_info.size_multiple,
            ),
            workers=workers[spec.name],
            adapters=ModelAdapters(**fitting_adapters(registry, spec)),
        )
        for spec in registry
    ]
    return jsonify(ModelList(models=models).model_dump(mode="json"))
