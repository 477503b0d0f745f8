"""The event stream's logic (events, heartbeats, resume) on a scripted job, and the
``webhook_events`` field's validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from easel.shared.errors import ValidationFailed
from easel.shared.schemas import parse_job_request, resolve_job
from easel.web.events import stream


def job(
    status: str, step: int = 0, preview: int | None = None, position: int | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "progress": {"step": step},
        "preview": {"step": preview, "url": f"/p?step={preview}"} if preview is not None else None,
        "queue_position": position,
    }


def run(
    states: list[dict[str, Any]],
    last_event_id: str | None = None,
    heartbeat: float = 100.0,
    changes: bool = True,
    reads: list[float] | None = None,
) -> list[str]:
    """The stream's chunks for ``states`` read in turn (the last repeated); every wait
    reports a change when ``changes`` (else none: the job is quiet). ``reads`` collects the
    clock at each read."""
    clock = [0.0]
    left = iter(states)

    def read() -> dict[str, Any]:
        if reads is not None:
            reads.append(clock[0])
        return next(left, states[-1])

    def wait(seconds: float) -> bool:
        clock[0] += seconds
        return changes

    return list(stream(read, last_event_id, heartbeat, wait, 0.5, lambda: clock[0], gone=lambda: False))


def events(chunks: list[str]) -> list[tuple[str, str, str]]:
    """(event, id, status) of each event chunk."""
    out = []
    for chunk in chunks:
        if chunk.startswith("id:"):
            lines = dict(line.split(": ", 1) for line in chunk.strip().split("\n"))
            out.append((lines["event"], lines["id"], json.loads(lines["data"])["status"]))
    return out


def test_events_follow_the_job_in_order_and_end_with_done() -> None:
    states = [
        job("queued", position=1),
        job("queued", position=0),
        job("running", 0),
        job("running", 3, preview=2),
        job("running", 3, preview=2),  # nothing changed: no event
        job("running", 3, preview=3),
        job("succeeded", 8),
    ]
    assert events(run(states)) == [
        ("status", "queued.0.", "queued"),
        ("progress", "queued.0.", "queued"),  # the queue position moved
        ("status", "running.0.", "running"),
        ("progress", "running.3.2", "running"),
        ("progress", "running.3.3", "running"),
        ("done", "done", "succeeded"),
    ]


def test_resume_skips_what_the_client_saw_and_heartbeats_fill_quiet_time() -> None:
    states = [job("running", 3, preview=2)] * 6 + [job("running", 4, preview=2), job("failed", 4)]
    chunks = run(states, last_event_id="running.3.2", heartbeat=1.0)
    assert [e for e, _, _ in events(chunks)][:1] == ["progress"]  # running.3.2 is not sent again
    assert events(chunks)[0][1] == "running.4.2" and events(chunks)[-1][0] == "done"
    assert chunks.count(": heartbeat\n\n") >= 2


def test_a_quiet_running_job_is_read_only_at_heartbeats() -> None:
    """A stream reads its job when the keeper saw it change; while quiet, only when a
    heartbeat is due (a queued job also every QUEUED_REFRESH_SECONDS, besides the keeper's
    nudges when its queue moves)."""
    reads: list[float] = []
    states = [job("running", 3)] * 4 + [job("succeeded", 8)]
    chunks = run(states, heartbeat=5.0, changes=False, reads=reads)
    assert events(chunks)[-1][0] == "done" and chunks.count(": heartbeat\n\n") == 3
    assert reads == [0.0, 5.0, 10.0, 15.0, 20.0]  # one read per heartbeat, none per poll
    queued: list[float] = []
    run([job("queued", position=3)] * 3 + [job("running", 1), job("failed", 1)], changes=False, reads=queued)
    assert queued == [0.0, 15.0, 30.0, 45.0, 145.0]  # running and quiet: the next read at the heartbeat


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhook_events": ["start"]}, "webhook_events: applies only with a webhook_url"),
        ({"webhook_url": "https://example.test/h", "webhook_events": []}, "must name at least one of"),
        ({"webhook_url": "https://example.test/h", "webhook_events": ["finished"]}, "webhook_events.0"),
    ],
)
def test_webhook_events_are_validated(env: dict[str, Any], fields: dict[str, Any], message: str) -> None:
    settings = env["settings"].model_copy(update={"webhook_secret": "k", "webhook_allow_private": True})
    with pytest.raises(ValidationFailed) as refused:
        resolve_job(parse_job_request({"prompt": "p", **fields}), env["registry"], settings)
    assert message in refused.value.message


def test_webhook_events_default_to_completed_and_accept_a_form_list(env: dict[str, Any]) -> None:
    settings = env["settings"].model_copy(update={"webhook_secret": "k", "webhook_allow_private": True})
    hook = {"prompt": "p", "webhook_url": "http://127.0.0.1:9/h"}
    assert resolve_job(parse_job_request(hook), env["registry"], settings).webhook_events == ["completed"]
    listed = parse_job_request({**hook, "webhook_events": "progress, start,start"})
    assert resolve_job(listed, env["registry"], settings).webhook_events == ["start", "progress"]
    assert resolve_job(parse_job_request({"prompt": "p"}), env["registry"], settings).webhook_events is None
