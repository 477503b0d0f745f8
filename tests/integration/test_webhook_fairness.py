"""One owner's slow webhook receivers delay only that owner's deliveries (issue 30): the
real ``easel webhooks`` process (Celery threads on the embedded SQLite broker) against
receivers on loopback, one of which trickles its answer a byte at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from bench.processes import Stack, wait_for
from easel.shared.db import engine_for
from easel.shared.models import Job, JobStatus
from easel.shared.queue import make_celery, send_webhook
from easel.shared.settings import Settings
from tests.factories import insert_job, make_stack
from tests.webhook_receiver import Receiver, Trickler


@pytest.fixture
def stack(tmp_path: Path, tiny_model: Path) -> Iterator[Stack]:
    stack = make_stack(tmp_path / "stack", tiny_model, {"EASEL_WEBHOOK_ALLOW_PRIVATE": "true"})
    stack.env.update(
        {
            "EASEL_WEBHOOK_CONCURRENCY": "2",
            "EASEL_WEBHOOK_CONCURRENCY_PER_OWNER": "1",
            "EASEL_WEBHOOK_TIMEOUT_SECONDS": "6",
            "EASEL_WEBHOOK_MAX_ATTEMPTS": "1",
        }
    )
    try:
        stack.start_webhooks()
        yield stack
    finally:
        stack.stop()


def test_a_trickling_owner_holds_one_slot_and_another_owner_is_delivered(stack: Stack) -> None:
    settings = Settings(home=Path(stack.env["EASEL_HOME"]))
    sessions = sessionmaker(engine_for(settings.database_url), expire_on_commit=False)
    trickler, receiver = Trickler(every=0.5), Receiver().start()
    try:
        slow = [
            insert_job(sessions, status=JobStatus.SUCCEEDED.value, webhook_url=trickler.url, owner_id="a")
            for _ in range(3)
        ]
        fast = insert_job(
            sessions, status=JobStatus.SUCCEEDED.value, webhook_url=f"{receiver.url}/b", owner_id="b"
        )
        app = make_celery(settings)
        for job_id in slow:
            assert send_webhook(app, job_id)
        wait_for(lambda: trickler.accepted >= 1, 30, "owner a's first delivery to start")
        time.sleep(0.5)  # the sender holds a's messages now: both threads free or busy with a
        started = time.monotonic()
        assert send_webhook(app, fast)
        wait_for(lambda: receiver.on("/b"), 20, "owner b's webhook", interval=0.05)
        waited = time.monotonic() - started
        # Before the per-owner share, a's trickling receivers held both threads (and, with a
        # per-read timeout only, held them for good): b waited for them.
        assert waited < 4.0, (waited, stack.logs())
        assert trickler.accepted == 1  # a's other deliveries waited for a's one slot
        with sessions() as session:
            job = session.get(Job, fast)
            assert job is not None and job.webhook_delivered_at is not None
        # a's first attempt ends at the 6 s deadline, not whenever the trickle would finish.

        def cut_at_deadline() -> bool:
            with sessions() as session:
                errors = [job.webhook_error or "" for job in session.query(Job).filter(Job.id.in_(slow))]
            return any("deadline" in error for error in errors)

        try:
            wait_for(cut_at_deadline, 20, "owner a's first attempt to end at its deadline", interval=0.5)
        except TimeoutError:
            raise AssertionError(stack.logs()) from None
    finally:
        trickler.stop()
        receiver.stop()
        engine_for(settings.database_url).dispose()
