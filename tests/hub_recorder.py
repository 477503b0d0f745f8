"""A stand-in Hugging Face Hub on loopback that records every request it gets.

Point ``HF_ENDPOINT`` at ``recorder.url``: a process that asks the Hub for anything asks
this server instead, which answers 404 and keeps the request line. A test that promises
"no process asks a hub" asserts ``recorder.requests`` stays empty.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubRecorder:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"


@contextmanager
def hub_recorder() -> Iterator[HubRecorder]:
    """A running recorder on 127.0.0.1 (a free port) for the ``with`` block."""
    recorder: HubRecorder

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            recorder.requests.append(f"{self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = _record

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = HubRecorder(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
