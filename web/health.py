"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from easel.shared.models import Worker
from easel.shared.workers import live_since
from easel.web.ops_metrics import check_dependencies
from easel.web.services import Services, services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Database, broker and storage all answer; 503 naming the ones that do not. With the
    database up, ``compile`` tells for each model the path of each live worker that
    compiles it (eager, compiling, compiled, failed) and its warm-up seconds."""
    svc = services()
    checks = check_dependencies(svc)
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable", "checks": checks}
    if checks["database"] == "ok":
        body["compile"] = compile_paths(svc)
    return jsonify(body), (200 if ready else 503)


def compile_paths(svc: Services) -> dict[str, dict[str, Any]]:
    """``{model: {worker id: {"path", "warm_up_seconds"}}}`` from the live workers'
    heartbeats (one read of the small ``workers`` table)."""
    since = live_since(svc.settings.worker_lost_after_seconds)
    paths: dict[str, dict[str, Any]] = {}
    with svc.session() as session:
        rows = session.execute(
            select(Worker.id, Worker.compile).where(Worker.stopped_at.is_(None), Worker.last_seen_at >= since)
        ).all()
    for worker_id, states in rows:
        for model, state in (states or {}).items():
            paths.setdefault(model, {})[worker_id] = state
    return paths
