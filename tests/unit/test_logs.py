"""JSON log lines with job context; request ids on responses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from easel.migrations.upgrade import upgrade
from easel.shared.logs import JsonFormatter
from easel.shared.settings import Settings
from easel.web import create_app


def test_json_lines_carry_the_job_context() -> None:
    record = logging.LogRecord(
        "easel.worker.engine.runner", logging.INFO, __file__, 1, "job %s succeeded", ("abc",), None
    )
    record.job_id, record.model = "abc", "tiny-sd"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job abc succeeded" and line["job_id"] == "abc" and line["model"] == "tiny-sd"
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")


def test_every_response_has_a_request_id(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    upgrade(settings.database_url)
    client = create_app(settings).test_client()
    generated = client.get("/api/v1/jobs")  # a 401: still identified
    assert generated.status_code == 401 and len(generated.headers["X-Request-ID"]) == 32
    echoed = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert echoed.headers["X-Request-ID"] == "trace-42"
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert replaced.headers["X-Request-ID"] != "bad id; drop"
