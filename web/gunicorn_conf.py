"""gunicorn settings of ``easel web``: the server's own errors in the API's error shape,
a quick shutdown without a traceback, and short garbage-collector pauses.

gunicorn answers some requests before the app sees them: a header or request line
over its limits (``431``, ``414``), a malformed request (``400``). It writes those
with ``gunicorn.util.write_error``, as an HTML page. ``easel web`` loads this module
(``--config python:easel.web.gunicorn_conf``), which replaces that function with one
that writes ``{"error": {"code", "message", "details"}}`` as JSON, like every other
error. Errors of a reverse proxy in front (its own size limits) are the proxy's.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys

from gunicorn import util

__all__ = ["post_worker_init", "worker_int"]  # gunicorn reads these settings; the rest is done by importing


def worker_int(worker: object) -> None:
    """A quick shutdown (SIGINT, SIGQUIT: Ctrl-C) of a worker: leave at once. gunicorn
    would raise ``SystemExit`` next, which the gevent worker runs in a greenlet of its own,
    and gevent then prints that as a failure with a traceback. Held calls are cut either
    way (a graceful stop is SIGTERM); their jobs go on, and their ``held_calls`` rows
    expire."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


FULL_COLLECTION_EVERY = 100
"""Young collections of the middle generation between two full ones (CPython's default: 10)."""


def post_worker_init(worker: object) -> None:
    """Once a worker has loaded the app, keep the garbage collector's full collections
    short and rare: they stop every greenlet of the process while they walk the heap.
    ``gc.freeze`` takes every object made so far (modules, the app, its metadata) out of
    their reach, and they come a tenth as often as by default (unreachable cycles wait a
    little longer to be freed; everything else is freed by reference counting as ever).
    Under ``bench.hold`` at K = 1,000 the full collections paused a web process for 0.1-0.8
    s each, a dozen times in three minutes; with both, 4 times and at most 0.15 s
    (docs/benchmarks.md, "Held calls")."""
    gc.freeze()
    threshold, middle, _ = gc.get_threshold()
    gc.set_threshold(threshold, middle, FULL_COLLECTION_EVERY)


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``write_error``, with a JSON body in the error shape."""
    code = reason.lower().replace(" ", "_") or "error"
    body = json.dumps(
        {"error": {"code": code, "message": mesg or reason, "details": []}}, ensure_ascii=True
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error
