"""REST v1: jobs, outputs and models."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, request, url_for

from shared.errors import NotFound
from shared.jobs import describe, queue_position
from shared.models import Job, JobOutput
from shared.registry import SCHEDULERS
from shared.schemas import ModelLimits, ModelList, ModelView
from web.services import services
from web.submit import accept_job, request_fields

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def output_url(job: Job, index: int) -> str:
    return url_for("api.get_output", job_id=job.id, index=index, _external=True)


def job_payload(job_id: str) -> dict:
    """The job object for ``job_id``, or ``NotFound``."""
    with services().session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(
                f"no job with id {job_id!r}", [{"field": "id", "message": "not found", "value": job_id}]
            )
        view = describe(job, output_url, queue_position(session, job))
    return view.model_dump(mode="json")


@bp.post("/jobs")
def create_job():  # type: ignore[no-untyped-def]
    job = accept_job(services(), request_fields(request))
    response = jsonify(job_payload(job.id))
    response.status_code = 202
    response.headers["Location"] = url_for("api.get_job", job_id=job.id)
    return response


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):  # type: ignore[no-untyped-def]
    return jsonify(job_payload(job_id))


@bp.get("/jobs/<job_id>/outputs/<int:index>")
def get_output(job_id: str, index: int):  # type: ignore[no-untyped-def]
    svc = services()
    with svc.session() as session:
        output = session.query(JobOutput).filter_by(job_id=job_id, index=index).one_or_none()
        if output is None:
            raise NotFound(
                f"job {job_id!r} has no output {index}",
                [{"field": "index", "message": "not found", "value": index}],
            )
        key, content_type = output.storage_key, output.content_type
    presigned = svc.storage.presigned_url(key, svc.settings.presign_expires_seconds)
    if presigned:
        return redirect(presigned, code=302)
    response = Response(svc.storage.get(key), mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=3600, immutable"
    return response


@bp.get("/models")
def list_models():  # type: ignore[no-untyped-def]
    registry = services().registry
    models = [
        ModelView(
            name=spec.name,
            default=spec.name == registry.default,
            types=list(spec.types),
            schedulers=list(SCHEDULERS),
            limits=ModelLimits(
                min_size=spec.min_size,
                max_size=spec.max_size,
                default_size=spec.default_size,
                max_steps=spec.max_steps,
                default_steps=spec.default_steps,
                max_num_images=spec.max_num_images,
                default_guidance_scale=spec.default_guidance_scale,
                default_scheduler=spec.default_scheduler,
            ),
        )
        for spec in registry
    ]
    return jsonify(ModelList(models=models).model_dump(mode="json"))
