"""HTML pages: the txt2img form and the live job page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for

from shared.errors import EaselError
from shared.models import Job
from shared.registry import SCHEDULERS
from web.services import services
from web.submit import accept_job, request_fields

bp = Blueprint("pages", __name__)


def _form_context(values: dict[str, Any], errors: dict[str, str], message: str = "") -> dict[str, Any]:
    registry = services().registry
    return {
        "models": list(registry),
        "default_model": registry.get(None),
        "schedulers": SCHEDULERS,
        "values": values,
        "errors": errors,
        "message": message,
    }


def _field_message(detail: dict[str, Any]) -> str:
    value = detail.get("value")
    if value is None or str(value) in detail["message"]:
        return detail["message"]
    return f"{detail['message']} (got {value})"


@bp.get("/")
def index():  # type: ignore[no-untyped-def]
    return render_template("index.html", **_form_context({}, {}))


@bp.post("/")
def submit():  # type: ignore[no-untyped-def]
    values = dict(request.form.items())
    try:
        job = accept_job(services(), request_fields(request))
    except EaselError as exc:
        errors = {d["field"]: _field_message(d) for d in reversed(exc.details)}
        return render_template("index.html", **_form_context(values, errors, exc.message)), (exc.status)
    return redirect(url_for("pages.job_page", job_id=job.id), code=303)


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):  # type: ignore[no-untyped-def]
    with services().session() as session:
        if session.get(Job, job_id) is None:
            abort(404)
    return render_template("job.html", job_id=job_id)
