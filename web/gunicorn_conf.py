"""gunicorn settings of ``easel web``: the server's own errors in the API's error shape.

gunicorn answers some requests before the app sees them: a header or request line
over its limits (``431``, ``414``), a malformed request (``400``). It writes those
with ``gunicorn.util.write_error``, as an HTML page. ``easel web`` loads this module
(``--config python:easel.web.gunicorn_conf``), which replaces that function with one
that writes ``{"error": {"code", "message", "details"}}`` as JSON, like every other
error. Errors of a reverse proxy in front (its own size limits) are the proxy's.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

__all__: list[str] = []  # no gunicorn setting here; importing is the point


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
