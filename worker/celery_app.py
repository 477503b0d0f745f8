"""The worker's Celery app: tiny, it only registers the tasks (see ``worker.tasks``)."""

from __future__ import annotations

from shared.queue import make_celery
from shared.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["worker.tasks", "worker.webhook_tasks"]
