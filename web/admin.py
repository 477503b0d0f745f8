"""The operator view (admin keys only): workers, queue depth per model, recent failures,
usage per key, and requeue / cancel of any job."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from easel.shared.jobs import cancel_job, get_job
from easel.shared.models import Job, JobStatus, Worker, utcnow
from easel.shared.queue_turns import queued_by_type
from easel.shared.transitions import requeue_finished
from easel.shared.usage import parse_range, per_key, report
from easel.web.auth import current_principal
from easel.web.services import services

bp = Blueprint("admin", __name__, url_prefix="/admin")
RECENT_FAILURES = 20


@bp.before_request
def _admins_only() -> None:
    principal = current_principal()
    if principal is None or not principal.is_admin:
        abort(403)


@bp.get("")
def overview() -> ResponseReturnValue:
    svc = services()
    live_since = utcnow() - timedelta(seconds=svc.settings.worker_lost_after_seconds)
    with svc.session() as session:
        workers = session.scalars(
            select(Worker).where(Worker.stopped_at.is_(None)).order_by(Worker.last_seen_at.desc()).limit(200)
        ).all()
        queued = queued_by_type(session)  # maintained: the queue's rows are never counted
        running = session.execute(
            select(Job.model, func.count()).where(Job.status == JobStatus.RUNNING.value).group_by(Job.model)
        ).all()
        failures = session.scalars(
            select(Job)
            .where(Job.status == JobStatus.FAILED.value)
            .order_by(Job.finished_at.desc())
            .limit(RECENT_FAILURES)
        ).all()
        start, end = parse_range(request.args.get("from"), request.args.get("to"))
        usage = report(session, start, end)  # maintained daily rows (shared.usage)
    queues: dict[str, dict[str, int]] = {}
    for _, model, count in queued:
        queues.setdefault(model, {"queued": 0, "running": 0})["queued"] += count
    for model, count in running:
        queues.setdefault(model, {"queued": 0, "running": 0})["running"] = count
    for name in svc.registry.names():
        queues.setdefault(name, {"queued": 0, "running": 0})
    return render_template(
        "admin.html",
        workers=workers,
        live_since=live_since,
        queues=queues,
        failures=failures,
        usage=usage,
        usage_keys=per_key(usage["days"]),
    )


@bp.post("/jobs/<job_id>/requeue")
def requeue(job_id: str) -> ResponseReturnValue:
    """Run a failed or canceled job again from scratch (same parameters and seed)."""
    svc = services()
    with svc.session() as session:
        model = get_job(session, job_id).model
        done = requeue_finished(session, job_id)
    if done:
        svc.wakeups.wake(job_id, model)
    return redirect(url_for("admin.overview"), code=303)


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> ResponseReturnValue:
    with services().session() as session:
        cancel_job(session, job_id)
    return redirect(url_for("admin.overview"), code=303)
