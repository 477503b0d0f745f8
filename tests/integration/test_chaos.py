"""The chaos script at a small size: zero jobs lost, zero run twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_chaos_loses_nothing_and_runs_nothing_twice(tiny_model: Path) -> None:
    report = run(
        jobs=30, workers=2, kills=3, redis_restarts=1, db_stops=1, seed=7, timeout=600, tiny_model=tiny_model
    )
    print(report)
    assert report.accepted == 30
    assert (report.worker_kills, report.redis_restarts, report.db_stops) == (3, 1, 1)
    assert report.lost == 0
    assert report.run_twice == 0
    assert report.duplicated_outputs == 0
    assert report.succeeded == 30, report.failures


def test_chaos_on_easel_run_loses_nothing_and_runs_nothing_twice(tiny_model: Path) -> None:
    report = run(
        jobs=20,
        kills=3,
        redis_restarts=0,
        db_stops=0,
        seed=3,
        timeout=600,
        tiny_model=tiny_model,
        embedded=True,
    )
    print(report)
    assert report.accepted == 20 and report.worker_kills == 3
    assert report.lost == 0
    assert report.run_twice == 0
    assert report.duplicated_outputs == 0
    assert report.succeeded == 20, report.failures
