"""The chaos script at a small size: zero jobs lost, zero run twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.chaos import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"jobs": 30, "workers": 2, "redis_restarts": 1, "db_stops": 1, "seed": 7}, id="services"
        ),
        pytest.param(
            {"jobs": 20, "redis_restarts": 0, "db_stops": 0, "seed": 3, "embedded": True}, id="easel-run"
        ),
    ],
)
def test_chaos_loses_nothing_and_runs_nothing_twice(tiny_model: Path, options: dict[str, Any]) -> None:
    """Workers killed mid-job (on the services stack also Redis restarted and PostgreSQL
    stopped; `easel run` has neither): every accepted job succeeds once."""
    report = run(kills=3, timeout=600, tiny_model=tiny_model, **options)
    print(report)
    assert report.accepted == options["jobs"]
    restarts = (options["redis_restarts"], options["db_stops"])
    assert (report.worker_kills, report.redis_restarts, report.db_stops) == (3, *restarts)
    assert report.lost == 0
    assert report.run_twice == 0
    assert report.duplicated_outputs == 0
    assert report.succeeded == options["jobs"], report.failures
