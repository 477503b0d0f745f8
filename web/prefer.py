"""Holding a request open until its job finishes: ``Prefer: wait`` on the REST API and
the synchronous OpenAI and AUTOMATIC1111 surfaces.

A held request polls the job's status with one short session per look (a single-column
read by primary key, its connection back in the pool between looks), so waiting costs
a gunicorn thread but no database connection. The looks start every 0.1 s, when a
small job is likely to finish, and slow to every 0.25 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from easel.shared.models import Job, JobStatus
from easel.web.services import Services

FIRST_LOOK_SECONDS = 0.1
LOOK_EVERY_SECONDS = 0.25
MAX_PREFER_WAIT = 60  # Replicate's bound on Prefer: wait


def job_finished(services: Services, job_id: str) -> bool:
    """Whether the job has reached a final status (one short session)."""
    with services.session() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status is None or JobStatus(status).is_terminal


def hold(
    services: Services,
    job_id: str,
    seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait up to ``seconds`` for the job to finish; whether it did."""
    deadline = clock() + seconds
    pause = FIRST_LOOK_SECONDS
    while True:
        if job_finished(services, job_id):
            return True
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        sleep(min(pause, remaining))
        pause = min(pause * 1.5, LOOK_EVERY_SECONDS)


def prefer_wait(values: list[str]) -> int | None:
    """The seconds a ``Prefer`` header asks to wait (RFC 7240, Replicate's ``wait``):
    ``wait=N`` gives ``min(N, 60)``, a bare ``wait`` 60; ``None`` when there is no
    usable ``wait`` preference (an unknown or malformed preference is ignored, as RFC
    7240 asks)."""
    for value in values:
        for preference in value.split(","):
            token = preference.split(";", 1)[0].strip()
            name, sep, raw = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            if not sep:
                return MAX_PREFER_WAIT
            raw = raw.strip().strip('"')
            if raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) > 0:
                return min(int(raw), MAX_PREFER_WAIT)
            return None
    return None
