"""Held calls under the real ``easel web`` (gunicorn's gevent worker, one process), with
no worker: every job stays queued, so every held call stays held (issue 30, item 1).

Far more calls than gthread had threads (8) are held at once, of every kind (``Prefer:
wait``, OpenAI, AUTOMATIC1111, event streams) over many keys, and still ``/healthz`` and
another tenant's requests are answered; past the process's bound a held call is refused
with 429 (``Prefer: wait``: a plain 202); a client that hangs up frees its slot at once."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from bench.hold import held_request
from bench.processes import Stack, wait_for
from easel.shared.db import engine_for
from easel.shared.models import HeldCall
from easel.shared.settings import Settings
from tests.factories import make_stack

HELD = 48  # six times gthread's threads
BOUND = HELD + 2  # EASEL_MAX_HELD_CALLS_PER_PROCESS
KEYS = 8
SMALL = {"prompt": "held", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def stack(tmp_path: Path, tiny_model: Path) -> Iterator[Stack]:
    stack = make_stack(
        tmp_path / "stack",
        tiny_model,
        {"EASEL_MAX_HELD_CALLS_PER_PROCESS": str(BOUND), "EASEL_SYNC_TIMEOUT_SECONDS": "120"},
    )
    stack.web_workers = 1
    yield from stack.running()


def held_count(stack: Stack) -> int:
    settings = Settings(home=Path(stack.env["EASEL_HOME"]))
    engine = engine_for(settings.database_url)
    with sessionmaker(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(HeldCall)) or 0)


def test_held_calls_of_every_kind_leave_the_service_answering(stack: Stack) -> None:
    keys = [stack.create_key(f"holder-{n}") for n in range(KEYS)]
    other = stack.create_key("other-tenant")
    theirs = requests.post(
        f"{stack.base_url}/api/v1/jobs", json=SMALL, headers={"Authorization": f"Bearer {other}"}, timeout=30
    ).json()
    stream_jobs = [
        requests.post(
            f"{stack.base_url}/api/v1/jobs",
            json=SMALL,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()["id"]
        for key in keys
    ]
    sockets: list[socket.socket] = []
    try:
        for n in range(HELD):  # each key holds HELD / KEYS calls, within its bound of 8
            key = keys[n % KEYS]
            kind = [
                ("POST", "/api/v1/jobs", SMALL),  # Prefer: wait
                ("POST", "/v1/images/generations", {"prompt": "held", "size": "64x64", "steps": 2}),
                ("POST", "/sdapi/v1/txt2img", {"prompt": "held", "width": 64, "height": 64, "steps": 2}),
                ("GET", f"/api/v1/jobs/{stream_jobs[n % KEYS]}/events", None),
            ][(n // KEYS) % 4]
            sockets.append(held_request(stack, key, *kind))
        wait_for(lambda: held_count(stack) == HELD, 60, "every call held")
        # Far past gthread's 8 threads, the probe and the other tenant are answered.
        assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
        mine = requests.get(
            f"{stack.base_url}/api/v1/jobs/{theirs['id']}",
            headers={"Authorization": f"Bearer {other}"},
            timeout=10,
        )
        assert mine.status_code == 200 and mine.json()["status"] == "queued"
        # The process's bound: two more fit, then OpenAI answers 429 and Prefer: wait a plain 202.
        extra = [
            held_request(stack, other, "GET", f"/api/v1/jobs/{theirs['id']}/events", None) for _ in range(2)
        ]
        sockets += extra
        wait_for(lambda: held_count(stack) == BOUND, 60, "the process full")
        refused = requests.post(
            f"{stack.base_url}/v1/images/generations",
            json={"prompt": "one too many", "size": "64x64"},
            headers={"Authorization": f"Bearer {keys[0]}"},
            timeout=10,
        )
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        assert "EASEL_MAX_HELD_CALLS_PER_PROCESS" in refused.json()["error"]["message"]
        plain = requests.post(
            f"{stack.base_url}/api/v1/jobs",
            json=SMALL,
            headers={"Authorization": f"Bearer {keys[1]}", "Prefer": "wait=30"},
            timeout=10,
        )
        assert plain.status_code == 202 and "Preference-Applied" not in plain.headers
        # Clients that hang up free their slots at once (within a gone-check), every kind.
        for sock in sockets[: HELD // 2]:
            sock.close()
        wait_for(lambda: held_count(stack) == BOUND - HELD // 2, 30, "the hung-up calls' slots freed")
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: held_count(stack) == 0, 30, "every slot freed")
