"""HTML pages: the txt2img form, the live job page and the gallery."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from easel.shared.adapters import CONTROLNET_FAMILIES, EMBEDDING_FAMILIES, adapter_form_values
from easel.shared.catalog_registry import ADAPTER_KINDS, fitting_adapters
from easel.shared.errors import EaselError
from easel.shared.families import ALL_SCHEDULERS
from easel.shared.jobs import list_jobs
from easel.shared.kinds import KINDS
from easel.shared.models import Job, JobType
from easel.shared.params import PARAM_FIELDS, params_of
from easel.shared.registry import Registry
from easel.shared.sd_upscale import SD_UPSCALE_FIELDS
from easel.shared.upscalers import upscaler_names
from easel.web.auth import current_principal
from easel.web.services import services
from easel.web.submit import accept_job, request_fields

bp = Blueprint("pages", __name__)

REUSED_FIELDS = tuple(
    name for name in PARAM_FIELDS if name not in ("keep_unmasked", "loras", "control", "hires", "sd_upscale")
)
"""The parameters a form is filled with from an earlier job (``?from=<id>``)."""
GALLERY_PAGE = 24


def form_adapters(registry: Registry) -> dict[str, dict[str, list[str]]]:
    """For each model, the LoRAs, ControlNets, VAEs and embeddings the form offers with it:
    those that fit it (``fitting_adapters``), less ControlNets and embeddings on a family
    that cannot use them (a job naming one would be refused)."""
    offered: dict[str, dict[str, list[str]]] = {}
    for spec in registry:
        fits = fitting_adapters(registry, spec)
        family = spec.family.value
        if family not in CONTROLNET_FAMILIES:
            fits["controlnets"] = []
        if family not in EMBEDDING_FAMILIES:
            fits["embeddings"] = []
        offered[spec.name] = fits
    return offered


def _form_context(values: dict[str, Any], errors: dict[str, str], message: str = "") -> dict[str, Any]:
    registry = services().registry
    default_model = registry.get(None)
    adapters = form_adapters(registry)
    selected = values.get("model") or default_model.name
    return {
        "models": list(registry),
        "default_model": default_model,
        "adapter_fits": adapters,  # per model, for the form's script (static/form.js)
        "adapters_model": selected,  # the model the server-rendered choices are for
        "fitting": adapters.get(selected, {kind: [] for kind in ADAPTER_KINDS}),
        "schedulers": ALL_SCHEDULERS,
        "edit_kinds": [kind for kind in KINDS.values() if kind.form == "pages.edit"],  # edit.html's types
        "upscalers": upscaler_names(registry),
        "upscale_default_scale": KINDS[JobType.UPSCALE].knobs["scale"],
        "strength_defaults": " / ".join(
            str(k.knobs["strength"]) for k in KINDS.values() if "strength" in k.knobs
        ),
        "values": values,
        "errors": errors,
        "message": message,
    }


def _visible(job: Job) -> bool:
    owner = current_principal().owner_filter
    return owner is None or job.owner_id == owner


def _field_message(detail: dict[str, Any]) -> str:
    value = detail.get("value")
    message: str = detail["message"]
    if value is None or str(value) in message:
        return message
    return f"{message} (got {value})"


def _reused_values() -> dict[str, Any]:
    """``?from=<job id>``: that job's settings, to fill a form with."""
    source = request.args.get("from")
    if not source:
        return {}
    with services().session() as session:
        job = session.get(Job, source)
        if job is None or not _visible(job):
            abort(404)
        params = params_of(job).model_dump(mode="json")
    values = {key: str(params[key]) for key in REUSED_FIELDS if params.get(key) is not None}
    hires = params.get("hires") or {}  # its resolved target size, as the form's hires_* fields
    values.update(
        {f"hires_{key}": str(value) for key, value in hires.items()}, **({"hires": "on"} if hires else {})
    )
    upscale = params.get("sd_upscale") or {}  # as the form's sd_upscale_* fields (the output size follows)
    values.update({f"sd_upscale_{key}": str(upscale[key]) for key in SD_UPSCALE_FIELDS if key in upscale})
    if upscale:
        values["sd_upscale"] = "on"
    return {**values, **adapter_form_values(params)}  # the control image is not reused


@bp.get("/")
def index() -> ResponseReturnValue:
    """The txt2img form; ``?from=<job id>`` fills it with that job's settings."""
    return render_template("index.html", **_form_context(_reused_values(), {}))


def _submit_form(template: str) -> ResponseReturnValue:
    """Accept a form post, or show ``template`` again with the errors next to the fields."""
    values = dict(request.form.items())
    try:
        principal = current_principal()
        job = accept_job(
            services(),
            request_fields(request),
            files=request.files,
            owner_id=principal.owner_id,
            admin=principal.is_admin,
        ).job
    except EaselError as exc:
        errors = {d["field"]: _field_message(d) for d in reversed(exc.details)}
        return render_template(template, **_form_context(values, errors, exc.message)), exc.status
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@bp.post("/")
def submit() -> ResponseReturnValue:
    return _submit_form("index.html")


@bp.get("/edit")
def edit() -> ResponseReturnValue:
    """The kinds that take an image (img2img, inpaint): upload it, paint or upload a mask."""
    return render_template("edit.html", **_form_context(_reused_values(), {}))


@bp.post("/edit")
def edit_submit() -> ResponseReturnValue:
    return _submit_form("edit.html")


@bp.get("/upscale")
def upscale() -> ResponseReturnValue:
    """Upscale an image: upload it, pick an upscaler and a scale."""
    return render_template("upscale.html", **_form_context({}, {}))


@bp.post("/upscale")
def upscale_submit() -> ResponseReturnValue:
    return _submit_form("upscale.html")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> ResponseReturnValue:
    with services().session() as session:
        job = session.get(Job, job_id)
        if job is None or not _visible(job):
            abort(404)
    forms = {kind.value: url_for(kind.form) for kind in KINDS.values()}  # "use these settings again"
    return render_template("job.html", job_id=job_id, forms=forms)


@bp.get("/gallery")
def gallery() -> ResponseReturnValue:
    """Past jobs, newest first, with a thumbnail of each one's first image."""
    try:
        with services().session() as session:
            jobs, next_cursor = list_jobs(
                session,
                GALLERY_PAGE,
                request.args.get("cursor") or None,
                owner=current_principal().owner_filter,
            )
    except EaselError:
        abort(400)
    return render_template("gallery.html", jobs=jobs, next_cursor=next_cursor)
