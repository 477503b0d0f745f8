"""The AUTOMATIC1111 web UI API under ``/sdapi/v1``: enough for ``webuiapi`` and Open
WebUI's AUTOMATIC1111 engine.

``txt2img`` and ``img2img`` are ordinary Easel jobs (``web.compat``), held until they
finish; ``batch_size * n_iter`` images are one job. ``progress`` and ``interrupt`` act
on the caller's current job (its latest running one, else its oldest queued one): per
API key, where A1111 has one global state. ``POST options`` keeps the caller's
``sd_model_checkpoint`` and ``sd_vae`` in storage, so every web process sees them. See
docs/automatic1111.md.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from PIL import ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session

from easel.shared.errors import BadRequest, Conflict, NotFound, StorageError, field_detail
from easel.shared.images import decode_base64, encode_png_bytes, load_image
from easel.shared.jobs import active_jobs, cancel_job, preview_key
from easel.shared.models import Job, JobStatus
from easel.shared.queue import send_webhook
from easel.web.a1111_extras import extras_fields, sd_upscale_fields, upscalers
from easel.web.a1111_map import (
    SD_UPSCALE_SCRIPT,
    a1111_error,
    info,
    invalid,
    is_sd_upscale,
    job_fields,
    sampler_named,
    samplers,
    vae_for,
)
from easel.web.a1111_options import CMD_FLAGS, options, realesrgan_models
from easel.web.auth import current_principal
from easel.web.compat import (
    compat_blueprint,
    outcome_error,
    output_b64,
    run_job,
    upload,
)
from easel.web.limits import accepted, limiter, submit_limit
from easel.web.services import services
from easel.web.submit import request_fields

bp = compat_blueprint("a1111", __name__, "/sdapi/v1", a1111_error)

CHECKPOINT = "sd_model_checkpoint"
VAE = "sd_vae"


def _options_key(owner_id: str) -> str:
    return f"clients/a1111/{owner_id}/options.json"


def _stored_options() -> dict[str, Any]:
    """The caller's options set with ``POST /options`` (``{}`` when none were)."""
    try:
        raw = services().storage.get(_options_key(current_principal().owner_id))
    except StorageError as exc:
        cause = exc.__cause__
        answer = getattr(cause, "response", None)  # botocore's ClientError
        code = answer.get("Error", {}).get("Code") if isinstance(answer, dict) else None
        # S3 answers AccessDenied for a missing key to a role that may not list the bucket
        missing = isinstance(cause, FileNotFoundError) or code in ("NoSuchKey", "404", "AccessDenied", "403")
        if missing:
            return {}
        raise
    stored = json.loads(raw)
    return stored if isinstance(stored, dict) else {}


def _body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise BadRequest(
            "send the payload as application/json",
            [field_detail("body", "must be application/json", request.mimetype or None)],
        )
    return request_fields(request)


def _answer(
    body: dict[str, Any], fields: dict[str, Any], files: dict[str, Any] | None = None
) -> ResponseReturnValue:
    outcome = run_job(fields, files)
    error = outcome_error(outcome, canceled_ok=True)  # interrupted: A1111 answers what it has
    if error is not None:
        raise error
    job = outcome.job
    images = output_b64(job) if body.get("send_images", True) else []
    parameters = {**body}
    if "init_images" in body and not body.get("include_init_images"):
        parameters.update(init_images=None, mask=None)  # as A1111: the inputs are not echoed
    return jsonify({"images": images, "parameters": parameters, "info": info(job, sampler_named(body))})


@bp.post("/txt2img")
@limiter.limit(submit_limit, deduct_when=accepted)
def txt2img() -> ResponseReturnValue:
    body = _body()
    options = _stored_options()
    fields = job_fields(body, options.get(CHECKPOINT), vae=options.get(VAE))
    return _answer(body, {**fields, "type": "txt2img"})


@bp.post("/img2img")
@limiter.limit(submit_limit, deduct_when=accepted)
def img2img() -> ResponseReturnValue:
    body = _body()
    options = _stored_options()
    fields = job_fields(body, options.get(CHECKPOINT), img2img=True, vae=options.get(VAE))
    if is_sd_upscale(body):  # A1111's "SD upscale" script: the job's sd_upscale
        fields["sd_upscale"] = sd_upscale_fields(body, services().registry)
    images = body.get("init_images") or []
    if not isinstance(images, list):
        raise invalid("init_images", "must be a list holding one base64 image", type(images).__name__)
    if len(images) != 1 or not isinstance(images[0], str):
        raise invalid("init_images", "must hold exactly one base64 image", f"{len(images)} images")
    files = {"image": upload("image", decode_base64("image", images[0]))}
    mask = body.get("mask")
    if mask:
        if not isinstance(mask, str):
            raise invalid("mask", "must be a base64 image", type(mask).__name__)
        mask_bytes = decode_base64("mask", mask)
        if body.get("inpainting_mask_invert"):  # 1: inpaint what is not masked
            settings = services().settings
            picture = load_image("mask", mask_bytes, settings.max_image_bytes, settings.max_image_pixels)
            mask_bytes = encode_png_bytes(ImageOps.invert(picture.convert("L")))
        files["mask"] = upload("mask", mask_bytes)
        if body.get("mask_blur") is not None:
            fields["mask_blur"] = body["mask_blur"]
    kind = "inpaint" if mask else "img2img"
    return _answer(body, {**fields, "type": kind}, files)


def current_job(session: Session, owner_id: str) -> Job | None:
    """The caller's current job: its latest running one, else its oldest queued one."""
    running = session.scalars(
        select(Job)
        .where(Job.owner_id == owner_id, Job.status == JobStatus.RUNNING.value)
        .order_by(Job.started_at.desc())
        .limit(1)
    ).first()
    if running is not None:
        return running
    return session.scalars(
        select(Job)
        .where(Job.owner_id == owner_id, Job.status == JobStatus.QUEUED.value)
        .order_by(Job.created_at)
        .limit(1)
    ).first()


IDLE_STATE = {
    "skipped": False,
    "interrupted": False,
    "job": "",
    "job_count": 0,
    "job_timestamp": "0",
    "job_no": 0,
    "sampling_step": 0,
    "sampling_steps": 0,
}


@bp.get("/progress")
def progress() -> ResponseReturnValue:
    from easel.web.api import job_view

    owner_id = current_principal().owner_id
    skip_image = request.args.get("skip_current_image", "false").lower() == "true"
    with services().session() as session:
        job = current_job(session, owner_id)
        if job is None:
            return jsonify(
                {
                    "progress": 0.0,
                    "eta_relative": 0.0,
                    "state": IDLE_STATE,
                    "current_image": None,
                    "textinfo": None,
                }
            )
        view = job_view(session, job)
        count = active_jobs(session, owner_id)
    state = {
        **IDLE_STATE,
        "interrupted": view["cancel_requested"],
        "job": f"easel-{job.id}",
        "job_count": count,
        "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"),
        "sampling_step": view["progress"]["step"],
        "sampling_steps": view["progress"]["total"],
    }
    return jsonify(
        {
            "progress": view["progress"]["fraction"],
            "eta_relative": view["eta_seconds"] or 0.0,
            "state": state,
            "current_image": None if skip_image else _preview(job),
            "textinfo": f"Easel job {job.id}: {job.status}",
        }
    )


def _preview(job: Job) -> str | None:
    """The job's live preview (``GET /api/v1/jobs/<id>/preview``) as base64, if it has one."""
    if job.preview_step is None:
        return None
    try:
        return base64.b64encode(services().storage.get(preview_key(job.id))).decode()
    except StorageError:
        return None  # pruned since the row was read: the next poll has no preview either


@bp.post("/interrupt")
def interrupt() -> ResponseReturnValue:
    """Cancel the caller's current job (a running one stops at its next step)."""
    svc = services()
    with svc.session() as session:
        job = current_job(session, current_principal().owner_id)
        try:
            canceled = cancel_job(session, job.id) if job is not None else None
        except Conflict:  # it finished meanwhile: nothing left to interrupt
            canceled = None
    if canceled is not None and canceled.status == JobStatus.CANCELED.value and canceled.webhook_url:
        send_webhook(svc.celery, canceled.id)  # a running job's webhook is sent by its worker
    return jsonify({})


@bp.post("/skip")
def skip() -> ResponseReturnValue:
    """A1111 skips to the next image of a batch; Easel's batch is one job: interrupt it."""
    return interrupt()


@bp.get("/sd-models")
def sd_models() -> ResponseReturnValue:
    return jsonify(
        [
            {
                "title": name,
                "model_name": name,
                "hash": None,
                "sha256": None,
                "filename": name,
                "config": None,
            }
            for name in services().registry.names()
        ]
    )


@bp.get("/samplers")
def sampler_list() -> ResponseReturnValue:
    return jsonify(samplers())


@bp.get("/schedulers")
def schedulers() -> ResponseReturnValue:
    return jsonify([{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1}])


@bp.get("/scripts")
def scripts() -> ResponseReturnValue:
    return jsonify({"txt2img": [], "img2img": [SD_UPSCALE_SCRIPT]})


@bp.get("/options")
def get_options() -> ResponseReturnValue:
    """A1111's common options with its defaults, and the caller's checkpoint and VAE."""
    stored = _stored_options()
    return jsonify(options(stored.get(CHECKPOINT) or services().registry.default, stored.get(VAE)))


@bp.post("/options")
def set_options() -> ResponseReturnValue:
    """Keep the caller's ``sd_model_checkpoint`` and ``sd_vae`` (``Automatic`` / ``None``:
    the model's own); other options are accepted and ignored, as is a ``null`` checkpoint
    (what ``GET`` answers while no model is known), so the whole object read back succeeds."""
    body = _body()
    svc = services()
    chosen: dict[str, Any] = {}
    if body.get(CHECKPOINT) is not None:
        name = body[CHECKPOINT]
        if not isinstance(name, str) or name not in svc.registry.names():
            raise invalid(CHECKPOINT, f"unknown model; known: {', '.join(svc.registry.names())}", name)
        chosen[CHECKPOINT] = name
    if VAE in body:
        vae = vae_for(body[VAE])
        if vae is not None and vae not in svc.registry.vaes:
            known = ", ".join(["Automatic", "None", *sorted(svc.registry.vaes)])
            raise invalid(VAE, f"unknown VAE; known: {known}", body[VAE])
        chosen[VAE] = vae
    if chosen:
        stored = {**_stored_options(), **chosen}
        key = _options_key(current_principal().owner_id)
        svc.storage.put(key, json.dumps(stored).encode(), "application/json")
    return jsonify(None)


@bp.get("/upscalers")
def list_upscalers() -> ResponseReturnValue:
    return jsonify(upscalers(services().registry))


@bp.post("/extra-single-image")
@limiter.limit(submit_limit, deduct_when=accepted)
def extra_single_image() -> ResponseReturnValue:
    """An upscale job (``web.a1111_extras``), held until it finishes."""
    body = _body()
    fields = extras_fields(body, services().registry)
    picture = body.get("image")
    if not isinstance(picture, str) or not picture:
        raise invalid("image", "must be a base64 image", type(picture).__name__)
    model = _stored_options().get(CHECKPOINT)  # the worker that runs it: one serving this model
    outcome = run_job(
        {**fields, **({"model": model} if model else {})},
        {"image": upload("image", decode_base64("image", picture))},
    )
    error = outcome_error(outcome)
    if error is not None:
        raise error
    return jsonify({"html_info": "", "image": output_b64(outcome.job)[0]})


@bp.get("/cmd-flags")
def cmd_flags() -> ResponseReturnValue:
    return jsonify(CMD_FLAGS)


@bp.get("/realesrgan-models")
def list_realesrgan_models() -> ResponseReturnValue:
    return jsonify(realesrgan_models(services().registry))


@bp.get("/hypernetworks")
@bp.get("/face-restorers")
@bp.get("/prompt-styles")
def none_of_these() -> ResponseReturnValue:
    """Hypernetworks, face restorers and prompt styles: Easel has none."""
    return jsonify([])


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> ResponseReturnValue:
    """A1111 endpoints Easel does not serve (``png-info``, ``interrogate``, ...): 404."""
    raise NotFound(f"Easel does not serve /sdapi/v1/{rest}")
