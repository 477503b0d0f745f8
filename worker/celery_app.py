"""The worker's Celery app: tiny, it only registers the tasks (see ``worker.tasks``)."""

from __future__ import annotations

from easel.shared.queue import make_celery
from easel.shared.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["easel.worker.tasks", "easel.worker.webhook_tasks"]
