"""Following and controlling a job through real processes: progress, queue, cancel, webhooks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bench.processes import Stack, wait_for
from tests.factories import WEBHOOK_SECRET
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

LONG = {"width": 512, "height": 512, "scheduler": "euler"}  # about 0.1 s a step here


@pytest.fixture
def stack(services_stack: Stack) -> Stack:
    return services_stack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def sample(stack: Stack, job_id: str, until: tuple[str, ...], timeout: float = 120) -> list[dict]:
    """Every distinct state the job object shows until it reaches ``until``."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.job(job_id)
        if not seen or job != seen[-1]:
            seen.append(job)
        if job["status"] in until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {until}: {seen[-1]}")


def test_progress_advances_through_intermediate_steps(stack: Stack) -> None:
    job = stack.submit(prompt="progress", steps=60, seed=1, **LONG)
    states = sample(stack, job["id"], ("succeeded", "failed"))
    assert states[-1]["status"] == "succeeded"
    steps = [s["progress"]["step"] for s in states if s["status"] == "running"]
    intermediate = sorted({step for step in steps if 0 < step < 60})
    assert len(intermediate) >= 3, steps
    assert steps == sorted(steps)  # never goes back
    assert all(s["progress"]["total"] == 60 for s in states)
    running = [s for s in states if s["status"] == "running"]
    assert all(s["eta_seconds"] and s["eta_seconds"] > 0 for s in running)
    timings = states[-1]["timings"]
    assert timings["queue_seconds"] >= 0 and timings["run_seconds"] > timings["generate_seconds"] > 0


def test_cancel_queued_and_running_jobs_then_the_worker_goes_on(stack: Stack) -> None:
    running = stack.submit(prompt="long", steps=150, **LONG)
    queued = stack.submit(prompt="never", steps=4, width=64, height=64)
    wait_for(lambda: stack.job(running["id"])["progress"]["step"] >= 2, 60, "the long job to start")

    response = stack.cancel(queued["id"])
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    response = stack.cancel(running["id"])
    assert response.status_code == 200 and response.json()["cancel_requested"] is True

    stopped = stack.wait(running["id"], timeout=60)
    assert stopped["status"] == "canceled"
    assert stopped["progress"]["step"] < 75, stopped["progress"]  # interrupted, not left to finish
    assert stopped["outputs"] == []

    after = stack.wait(stack.submit(prompt="next", steps=3, width=64, height=64)["id"])
    assert after["status"] == "succeeded"
    never = stack.job(queued["id"])
    assert never["status"] == "canceled" and never["started_at"] is None and never["attempts"] == 0

    conflict = stack.cancel(after["id"])
    assert conflict.status_code == 409
    assert (
        conflict.json()["error"]["code"] == "conflict" and "succeeded" in conflict.json()["error"]["message"]
    )
    assert stack.cancel(queued["id"]).status_code == 409


def test_queue_position_counts_down_and_eta_is_positive(stack: Stack) -> None:
    first = stack.submit(prompt="ahead", steps=30, **LONG)
    wait_for(lambda: stack.job(first["id"])["status"] == "running", 60, "the first job to start")
    # Different step counts: different batch keys, so each job waits for its own claim.
    middle = [stack.submit(prompt=f"mid {i}", steps=8 + i, **LONG) for i in range(2)]
    last = stack.submit(prompt="last", steps=10, **LONG)
    assert last["queue_position"] == 2 and last["eta_seconds"] > 0
    states = sample(stack, last["id"], ("running", "succeeded"))
    positions = [s["queue_position"] for s in states if s["status"] == "queued"]
    assert positions[0] == 2 and positions == sorted(positions, reverse=True)
    assert set(positions) >= {2, 1, 0}, positions
    assert all(s["eta_seconds"] > 0 for s in states if s["status"] == "queued")
    for job in (first, *middle, last):
        assert stack.wait(job["id"])["status"] == "succeeded"


def test_webhook_is_signed_and_retried(stack: Stack, receiver: Receiver) -> None:
    receiver.failures["/flaky"] = 2
    job = stack.submit(prompt="hook", steps=2, width=64, height=64, webhook_url=receiver.url + "/flaky")
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded"
    deliveries = wait_for(
        lambda: len(receiver.on("/flaky")) >= 3 and receiver.on("/flaky"), 30, "3 deliveries"
    )
    assert [d.answered for d in deliveries] == [500, 500, 200]
    last = deliveries[-1]
    payload = Webhook(WEBHOOK_SECRET).verify(last.body, last.headers)  # Standard Webhooks
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "d3Jvbmc=").verify(last.body, last.headers)
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1  # one message, retried
    assert payload["id"] == job["id"] and payload["status"] == "succeeded" and payload["outputs"]
    assert last.headers["Easel-Event"] == "job.succeeded"
    recorded = wait_for(
        lambda: (j := stack.job(job["id"]))["webhook"]["delivered_at"] and j, 10, "delivery record"
    )
    assert recorded["webhook"]["attempts"] == 3 and recorded["webhook"]["last_error"] is None


def test_a_dead_webhook_receiver_never_blocks_the_worker(stack: Stack, receiver: Receiver) -> None:
    receiver.failures["/dead"] = -1  # always 500
    hooked = stack.submit(
        prompt="dead hook", steps=2, width=64, height=64, webhook_url=receiver.url + "/dead"
    )
    assert stack.wait(hooked["id"])["status"] == "succeeded"
    other = stack.wait(stack.submit(prompt="unblocked", steps=2, width=64, height=64)["id"])
    assert other["status"] == "succeeded"
    # Three attempts (EASEL_WEBHOOK_MAX_ATTEMPTS), then it gives up and says why.
    final = wait_for(
        lambda: (j := stack.job(hooked["id"]))["webhook"]["attempts"] == 3 and j, 30, "3 attempts"
    )
    assert final["webhook"]["delivered_at"] is None and "HTTP 500" in final["webhook"]["last_error"]
    assert len(receiver.on("/dead")) == 3


def test_canceled_queued_job_sends_its_webhook(stack: Stack, receiver: Receiver) -> None:
    blocker = stack.submit(prompt="blocker", steps=40, **LONG)
    job = stack.submit(prompt="to cancel", steps=2, width=64, height=64, webhook_url=receiver.url + "/cancel")
    assert stack.cancel(job["id"]).json()["status"] == "canceled"
    deliveries = wait_for(lambda: receiver.on("/cancel"), 30, "the cancel webhook")
    assert json.loads(deliveries[0].body)["status"] == "canceled"
    assert deliveries[0].headers["Easel-Event"] == "job.canceled"
    stack.cancel(blocker["id"])
    stack.wait(blocker["id"])


def test_worker_heartbeat_is_recorded(stack: Stack) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["EASEL_DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, models, last_seen_at FROM workers WHERE stopped_at IS NULL")
        ).all()
    engine.dispose()
    assert rows and all(
        "tiny-sd" in (r.models if isinstance(r.models, list) else json.loads(r.models)) for r in rows
    )
