"""A dropped event stream gives its per-key slot back at once (issue 30), under the real
``easel web`` (gunicorn's gevent worker) on the embedded defaults; no worker, so the job stays
queued and the stream stays quiet (nothing written until a heartbeat)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.processes import Stack, wait_for
from tests.factories import make_stack


@pytest.fixture
def stack(tmp_path: Path, tiny_model: Path) -> Iterator[Stack]:
    stack = make_stack(tmp_path / "stack", tiny_model, {"EASEL_MAX_HELD_CALLS_PER_KEY": "1"})
    stack.env["EASEL_EVENT_STREAM_HEARTBEAT_SECONDS"] = "15"  # the default: a quiet stream writes rarely
    stack.web_workers = 1
    stack.create_key("streams")
    yield from stack.running()


def open_stream(stack: Stack, job_id: str) -> tuple[socket.socket, bytes]:
    """A raw connection that asked for the job's events; what it read first."""
    sock = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    sock.sendall(
        f"GET /api/v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {stack.api_key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


def test_a_dropped_stream_frees_its_slot_for_the_reconnection(stack: Stack) -> None:
    job = stack.submit(prompt="nobody runs this", width=64, height=64, steps=2)
    first, head = open_stream(stack, job["id"])
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    second, refused = open_stream(stack, job["id"])  # the bound is 1: taken
    assert refused.startswith(b"HTTP/1.1 429"), refused[:200]
    second.close()
    first.close()  # the network blips; the browser reconnects after `retry: 2000`

    def reopened() -> socket.socket | None:
        again, head = open_stream(stack, job["id"])
        if head.startswith(b"HTTP/1.1 429"):
            again.close()
            return None
        assert head.startswith(b"HTTP/1.1 200"), head[:300]
        return again

    # Freed within a gone-check (0.5 s), long before the old heartbeat-bound release (15 s).
    wait_for(reopened, 5, "the dropped stream's slot").close()
