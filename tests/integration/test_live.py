"""Watching a job live on real processes (PostgreSQL, Redis, S3, authentication on): the
preview on the job object, the event stream (order, end, resume, bound) and Standard
Webhooks filtered by event."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image
from standardwebhooks import Webhook

from bench.processes import Stack, wait_for
from easel.client import EaselApiError, EaselClient
from tests.factories import WEBHOOK_SECRET
from tests.webhook_receiver import Receiver

LONG = {"width": 256, "height": 256, "steps": 120}  # a few seconds on the tiny model
ORDER = ["queued", "running", "succeeded"]


@pytest.fixture
def stack(services_stack: Stack) -> Stack:
    return services_stack


@pytest.fixture
def client(stack: Stack) -> EaselClient:
    return EaselClient(stack.base_url, stack.api_key)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def test_events_previews_and_webhooks_of_one_long_job(
    stack: Stack, client: EaselClient, receiver: Receiver
) -> None:
    hooked = stack.submit(
        prompt="live",
        seed=1,
        webhook_url=receiver.url + "/all",
        webhook_events=["start", "progress", "completed"],
        **LONG,
    )
    plain = stack.submit(
        prompt="plain", seed=2, width=64, height=64, steps=2, webhook_url=receiver.url + "/plain"
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    during: dict[str, Any] | None = None
    for event, job in client.events(hooked["id"]):
        seen.append((event, job))
        if during is None and job["status"] == "running" and job["preview"]:
            during = stack.job(hooked["id"])  # the job object shows the preview while it runs
            preview = stack.download(during["preview"]["url"])
            with Image.open(io.BytesIO(preview.content)) as picture:
                assert picture.format == "JPEG" and picture.size == (256, 256)
    # Events in order; the last one is "done" with the finished job, and the stream ended there.
    events = [event for event, _ in seen]
    assert events[0] == "status" and events[-1] == "done" and events.count("done") == 1
    statuses = [job["status"] for _, job in seen]
    assert [ORDER.index(s) for s in statuses] == sorted(ORDER.index(s) for s in statuses)
    assert seen[-1][1]["status"] == "succeeded" and seen[-1][1]["outputs"]
    steps = [job["progress"]["step"] for _, job in seen if job["status"] == "running"]
    assert steps == sorted(steps) and len(set(steps)) > 2
    assert during is not None and during["preview"]["step"] >= 1
    assert "/preview?step=" in during["preview"]["url"]
    previews = {job["preview"]["step"] for _, job in seen if job["preview"]}
    assert len(previews) >= 2  # the preview moved on while the job ran
    # Webhooks: every delivery verifies with the standardwebhooks library; the filter holds.
    verify = Webhook(WEBHOOK_SECRET).verify
    wait_for(
        lambda: any(d.headers["Easel-Event"] == "job.succeeded" for d in receiver.on("/all")), 30, "completed"
    )
    wait_for(lambda: receiver.on("/plain"), 30, "the plain job's webhook")
    delivered = receiver.on("/all")
    kinds = [d.headers["Easel-Event"] for d in delivered]
    assert kinds[0] == "job.start" and kinds[-1] == "job.succeeded" and "job.progress" in kinds, kinds
    bodies = [verify(d.body, d.headers) for d in delivered]
    assert all(body["id"] == hooked["id"] for body in bodies)
    assert len({d.headers["webhook-id"] for d in delivered}) == len(delivered)  # one id per message
    assert [d.headers["Easel-Event"] for d in receiver.on("/plain")] == [
        "job.succeeded"
    ]  # default: completed
    assert verify(receiver.on("/plain")[0].body, receiver.on("/plain")[0].headers)["id"] == plain["id"]


def test_last_event_id_resumes_and_the_bound_answers_429(stack: Stack, client: EaselClient) -> None:
    job = stack.submit(prompt="resume", seed=3, **LONG)
    quick = stack.submit(prompt="quick", width=64, height=64, steps=2)
    url = f"{stack.base_url}/api/v1/jobs/{job['id']}/events"
    first_id = None
    for _event, current in client.events(job["id"]):
        if current["status"] == "running":
            first_id = client.last_event_id
            break  # the connection drops here
    assert first_id is not None and first_id.startswith("running.")
    # The bound of held calls per key (EASEL_MAX_HELD_CALLS_PER_KEY, 8 by default): one more answers 429.
    opened: list[requests.Response] = []
    try:
        for _ in range(8):  # the dropped stream's slot frees once its server side sees the hang-up
            opened.append(wait_for(lambda: _open(stack, url), 30, "an event stream"))
        refused = stack.http.get(url, timeout=30)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_held_calls"
        assert refused.headers["Retry-After"]
        # A client refused a stream polls instead (easel submit --wait does the same).
        assert client.wait(quick["id"], timeout=120)["status"] == "succeeded"
        assert client.last_event_id is None  # no event came: it polled
    finally:
        for response in opened:
            response.close()
    # Resumed from first_id: nothing already seen again, and the stream still ends with "done".
    resumed = wait_for(lambda: _try_events(client, job["id"], first_id), 30, "a stream slot to free up")
    assert resumed[0][1] != first_id and resumed[-1][0] == "done"
    assert client.last_event_id == "done"
    # After "done", a reconnection gets 204: the stream is over.
    assert stack.http.get(url, headers={"Last-Event-ID": "done"}, timeout=10).status_code == 204


def _open(stack: Stack, url: str) -> requests.Response | None:
    response = stack.http.get(url, stream=True, timeout=30)
    if response.status_code == 429:
        response.close()
        return None
    assert response.status_code == 200, response.text
    return response


def _try_events(client: EaselClient, job_id: str, last_event_id: str) -> list[tuple[str, str]] | None:
    """(event, id) of the whole resumed stream, or ``None`` while the bound still refuses
    (closed connections give their slots back when their stream next writes)."""
    try:
        out = []
        for event, _job in client.events(job_id, last_event_id):
            out.append((event, client.last_event_id or ""))
        return out
    except EaselApiError as exc:
        if exc.status == 429:
            return None
        raise


def test_events_of_someone_elses_job_are_404(stack: Stack) -> None:
    job = stack.submit(prompt="mine", width=64, height=64, steps=2)
    other = stack.create_key("someone-else")
    answer = requests.get(
        f"{stack.base_url}/api/v1/jobs/{job['id']}/events",
        headers={"Authorization": f"Bearer {other}"},
        timeout=10,
    )
    assert answer.status_code == 404 and json.loads(answer.text)["error"]["code"] == "not_found"
    preview = requests.get(
        f"{stack.base_url}/api/v1/jobs/{job['id']}/preview",
        headers={"Authorization": f"Bearer {other}"},
        timeout=10,
    )
    assert preview.status_code == 404
