"""The web's wake-ups on a real Redis broker (the coalescing itself: tests/unit/test_wakeups.py)."""

from __future__ import annotations

from pathlib import Path

import redis

from easel.migrations.upgrade import upgrade
from easel.shared.queue import queue_name
from easel.shared.settings import Settings
from easel.web import create_app
from tests.factories import ManualTimers


def test_submits_publish_through_the_apps_coalescer(tmp_path: Path, own_redis_url: str) -> None:
    """On Redis: five submits in a window publish one wake-up, and one more at its end."""
    settings = Settings(home=tmp_path, broker_url=own_redis_url, auth_enabled=False)
    upgrade(settings.database_url)
    app = create_app(settings)
    wakeups = app.extensions["easel"].wakeups
    timers = ManualTimers()
    wakeups.clock, wakeups.schedule = (lambda: timers.now), timers.schedule
    broker = redis.Redis.from_url(own_redis_url)
    queue = queue_name(app.extensions["easel"].registry.default)
    with app.test_client() as client:
        for index in range(5):
            response = client.post("/api/v1/jobs", json={"prompt": f"p{index}"})
            assert response.status_code == 202, response.get_json()
    assert broker.llen(queue) == 1 and len(timers.due) == 1
    timers.fire()
    assert broker.llen(queue) == 2
    broker.close()
